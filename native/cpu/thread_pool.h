// Persistent worker pool for the CPU device.
//
// parallel_for(n, fn) splits [0, n) into contiguous chunks, one per thread (the calling thread
// takes chunk 0), and returns when all are done. Workers spin briefly on a generation counter,
// then sleep on a condition variable, so back-to-back kernels (the decode loop issues ~10 per
// layer) cost a few hundred nanoseconds of hand-off, and an idle pool costs no CPU.
// Invariant: only one thread calls parallel_for at a time (the engine serialises calls).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace metallic::cpu {

// A non-owning reference to a callable fn(begin, end, thread_index). parallel_for returns only
// after every chunk has run, so the callable outlives every use; unlike std::function (whose
// captures past two pointers go to the heap), building one allocates nothing in the token loop.
class ChunkFn {
 public:
  template <typename F, typename = std::enable_if_t<!std::is_same_v<std::decay_t<F>, ChunkFn>>>
  ChunkFn(F&& f) noexcept  // NOLINT(google-explicit-constructor): any lambda passes as is
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_(&invoke<std::remove_reference_t<F>>) {}
  void operator()(int64_t begin, int64_t end, int thread) const { call_(obj_, begin, end, thread); }

 private:
  template <typename F>
  static void invoke(void* obj, int64_t begin, int64_t end, int thread) {
    (*static_cast<F*>(obj))(begin, end, thread);
  }
  void* obj_;
  void (*call_)(void*, int64_t, int64_t, int);
};

class ThreadPool {
 public:
  // fn(begin, end, thread_index) processes items [begin, end).
  using Fn = ChunkFn;

  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn over [0, n) split into size() chunks aligned to `grain` items. Exceptions thrown by
  // fn are caught in workers and rethrown here (first one wins).
  void parallel_for(int64_t n, Fn fn, int64_t grain = 1);

 private:
  void worker(int index);
  void run_chunk(int index);

  int n_threads_;
  std::vector<std::thread> threads_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  const Fn* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t grain_ = 1;
  std::exception_ptr error_;
  std::mutex error_mu_;
};

}  // namespace metallic::cpu
