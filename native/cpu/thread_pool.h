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
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace metallic::cpu {

class ThreadPool {
 public:
  // fn(begin, end, thread_index) processes items [begin, end).
  using Fn = std::function<void(int64_t, int64_t, int)>;

  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn over [0, n) split into size() chunks aligned to `grain` items. Exceptions thrown by
  // fn are caught in workers and rethrown here (first one wins).
  void parallel_for(int64_t n, const Fn& fn, int64_t grain = 1);

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
