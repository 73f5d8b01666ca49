#ifndef HAMLET_SERVER_WORK_POOL_H_
#define HAMLET_SERVER_WORK_POOL_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace hamlet::server {

// A fixed number of threads running tasks in the order they were added: for
// work that blocks on the disk (a pull's reads), which must not run on gRPC's
// callback threads. A task waiting holds no thread. (Neither gRPC nor Abseil
// offers a public pool.)
class WorkPool {
 public:
  explicit WorkPool(size_t threads);
  // Runs the tasks already added, then joins the threads.
  ~WorkPool();
  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  void Add(std::function<void()> task);

 private:
  void Run();

  absl::Mutex mu_;
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace hamlet::server

#endif  // HAMLET_SERVER_WORK_POOL_H_
