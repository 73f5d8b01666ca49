// The next definition of a symbol, for the TSan shims that stand in for a
// shared library's function (tsan_abseil.cc, tsan_grpc.cc). Only for
// sanitizer builds.
#ifndef HAMLET_TOOLS_SANITIZERS_REAL_SYMBOL_H_
#define HAMLET_TOOLS_SANITIZERS_REAL_SYMBOL_H_

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

namespace hamlet::sanitizers {

// The shared library's definition of `symbol` (as linked: a C name, or a
// mangled C++ one), cast to F; aborts if no library defines it.
template <typename F>
F Real(const char* symbol) {
  void* found = dlsym(RTLD_NEXT, symbol);
  if (found == nullptr) {
    std::fprintf(stderr, "TSan shim: %s is not defined by any loaded library: %s\n", symbol, dlerror());
    std::abort();
  }
  return reinterpret_cast<F>(found);
}

}  // namespace hamlet::sanitizers

#endif  // HAMLET_TOOLS_SANITIZERS_REAL_SYMBOL_H_
