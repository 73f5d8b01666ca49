// Makes Debian's Abseil mutexes visible to ThreadSanitizer.
//
// Debian builds libabsl_synchronization without -fsanitize=thread, so TSan
// never sees absl::Mutex lock or unlock: every access guarded by one (ours,
// and gRPC's, whose gpr_mu is an absl::Mutex) would be reported as a race.
// Linked into every executable of a HAMLET_SANITIZE=thread build (with
// -rdynamic), the definitions below take the place of the library's: each
// tells TSan what is about to happen, calls the library's own function (found
// with dlsym(RTLD_NEXT)) and tells TSan what happened. Between the pre and post
// annotations TSan ignores memory accesses, which covers the conditions Abseil
// evaluates inside Lock, Unlock and Await.
//
// A wait (Await, CondVar::Wait) releases and takes the mutex again: to TSan
// it is an unlock followed by a lock. Abseil's functions also call each other
// through these symbols; only the outermost call is announced. absl::Notification is announced
// as a release in Notify and an acquire when a wait returns; its inline
// HasBeenNotified() cannot be wrapped, so a caller that only polls it would
// still be reported (nothing in Hamlet does).
//
// Only for sanitizer builds: the build never compiles this file otherwise.

#include <sanitizer/tsan_interface.h>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "tools/sanitizers/real_symbol.h"

namespace {

using hamlet::sanitizers::Real;

// The mangled names carry Abseil's inline namespace, which Debian sets.
#define HAMLET_ABSL_NS "4absl7debian3"

// Abseil's own functions call each other (AwaitWithTimeout calls
// AwaitWithDeadline through the same symbols): only the outermost call is
// announced to TSan.
thread_local int depth = 0;

// Announces one call: `before` unless nested, the call, then `after` unless
// nested; returns what the call returned.
template <typename Call, typename Before, typename After>
auto Announced(Before before, Call call, After after) {
  const bool outermost = depth++ == 0;
  if (outermost) before();
  struct Leave {
    ~Leave() {
      if (--depth == 0 && outermost) after();
    }
    bool outermost;
    After after;
  } leave{outermost, after};
  return call();
}

// To TSan, a wait is an unlock and a later lock.
template <typename Call>
auto Waited(void* mu, Call call) {
  return Announced(
      [mu] {
        __tsan_mutex_pre_unlock(mu, 0);
        __tsan_mutex_post_unlock(mu, 0);
        __tsan_mutex_pre_lock(mu, 0);
      },
      call, [mu] { __tsan_mutex_post_lock(mu, 0, 0); });
}

template <typename Call>
auto Locked(void* mu, unsigned flags, Call call) {
  return Announced([mu, flags] { __tsan_mutex_pre_lock(mu, flags); }, call,
                   [mu, flags] { __tsan_mutex_post_lock(mu, flags, 0); });
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static auto real = Real<void (*)(Mutex*)>("_ZN" HAMLET_ABSL_NS "5Mutex4LockEv");
  Locked(this, 0, [&] { real(this); });
}

void Mutex::ReaderLock() {
  static auto real = Real<void (*)(Mutex*)>("_ZN" HAMLET_ABSL_NS "5Mutex10ReaderLockEv");
  Locked(this, __tsan_mutex_read_lock, [&] { real(this); });
}

bool Mutex::TryLock() {
  static auto real = Real<bool (*)(Mutex*)>("_ZN" HAMLET_ABSL_NS "5Mutex7TryLockEv");
  bool locked = false;
  Announced([this] { __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock); }, [&] { locked = real(this); },
            [this, &locked] {
              __tsan_mutex_post_lock(this, locked ? __tsan_mutex_try_lock : __tsan_mutex_try_lock_failed, 0);
            });
  return locked;
}

bool Mutex::ReaderTryLock() {
  static auto real = Real<bool (*)(Mutex*)>("_ZN" HAMLET_ABSL_NS "5Mutex13ReaderTryLockEv");
  bool locked = false;
  Announced([this] { __tsan_mutex_pre_lock(this, __tsan_mutex_try_read_lock); }, [&] { locked = real(this); },
            [this, &locked] {
              __tsan_mutex_post_lock(this, locked ? __tsan_mutex_try_read_lock : __tsan_mutex_try_read_lock_failed, 0);
            });
  return locked;
}

void Mutex::Unlock() {
  static auto real = Real<void (*)(Mutex*)>("_ZN" HAMLET_ABSL_NS "5Mutex6UnlockEv");
  Announced([this] { __tsan_mutex_pre_unlock(this, 0); }, [&] { real(this); },
            [this] { __tsan_mutex_post_unlock(this, 0); });
}

void Mutex::ReaderUnlock() {
  static auto real = Real<void (*)(Mutex*)>("_ZN" HAMLET_ABSL_NS "5Mutex12ReaderUnlockEv");
  Announced([this] { __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock); }, [&] { real(this); },
            [this] { __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock); });
}

void Mutex::LockWhen(const Condition& cond) {
  static auto real = Real<void (*)(Mutex*, const Condition&)>("_ZN" HAMLET_ABSL_NS "5Mutex8LockWhenERKNS0_9ConditionE");
  Locked(this, 0, [&] { real(this, cond); });
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, absl::Duration)>(
      "_ZN" HAMLET_ABSL_NS "5Mutex19LockWhenWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return Locked(this, 0, [&] { return real(this, cond, timeout); });
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "_ZN" HAMLET_ABSL_NS "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return Locked(this, 0, [&] { return real(this, cond, deadline); });
}

void Mutex::Await(const Condition& cond) {
  static auto real = Real<void (*)(Mutex*, const Condition&)>("_ZN" HAMLET_ABSL_NS "5Mutex5AwaitERKNS0_9ConditionE");
  Waited(this, [&] { real(this, cond); });
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, absl::Duration)>(
      "_ZN" HAMLET_ABSL_NS "5Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return Waited(this, [&] { return real(this, cond, timeout); });
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  static auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "_ZN" HAMLET_ABSL_NS "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return Waited(this, [&] { return real(this, cond, deadline); });
}

void CondVar::Wait(Mutex* mu) {
  static auto real = Real<void (*)(CondVar*, Mutex*)>("_ZN" HAMLET_ABSL_NS "7CondVar4WaitEPNS0_5MutexE");
  Waited(mu, [&] { real(this, mu); });
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  static auto real = Real<bool (*)(CondVar*, Mutex*, absl::Duration)>(
      "_ZN" HAMLET_ABSL_NS "7CondVar15WaitWithTimeoutEPNS0_5MutexENS0_8DurationE");
  return Waited(mu, [&] { return real(this, mu, timeout); });
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  static auto real = Real<bool (*)(CondVar*, Mutex*, absl::Time)>("_ZN" HAMLET_ABSL_NS
                                                                  "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  return Waited(mu, [&] { return real(this, mu, deadline); });
}

void Notification::Notify() {
  static auto real = Real<void (*)(Notification*)>("_ZN" HAMLET_ABSL_NS "12Notification6NotifyEv");
  Announced([this] { __tsan_release(this); }, [&] { real(this); }, [] {});
}

void Notification::WaitForNotification() const {
  static auto real = Real<void (*)(const Notification*)>("_ZNK" HAMLET_ABSL_NS "12Notification19WaitForNotificationEv");
  Announced([] {}, [&] { real(this); }, [this] { __tsan_acquire(const_cast<Notification*>(this)); });
}

bool Notification::WaitForNotificationWithTimeout(absl::Duration timeout) const {
  static auto real = Real<bool (*)(const Notification*, absl::Duration)>(
      "_ZNK" HAMLET_ABSL_NS "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  bool notified = false;
  Announced([] {}, [&] { notified = real(this, timeout); },
            [this, &notified] {
              if (notified) __tsan_acquire(const_cast<Notification*>(this));
            });
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
