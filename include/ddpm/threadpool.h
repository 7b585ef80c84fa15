// A persistent pool of worker threads. The calling thread takes part as thread 0.
//
// run(n, fn) calls fn(task, thread) for every task in [0, n) and returns when all are done. Tasks are handed out
// dynamically, so callers must make each task's result independent of which thread runs it (they do: every op
// owns disjoint output elements per task and keeps a fixed reduction order) — that is what makes results
// bit-identical for any thread count. `thread` indexes per-thread scratch memory.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ddpm {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // threads <= 0: number of physical cores
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  void run(int64_t tasks, const std::function<void(int64_t task, int thread)>& fn);

  static int physical_cores();

 private:
  void worker_loop(int thread);
  void work(int thread);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t, int)>* job_ = nullptr;
  int64_t job_tasks_ = 0;
  std::atomic<int64_t> next_task_{0};
  std::atomic<int> busy_{0};
  std::atomic<uint64_t> generation_{0};
  bool stopping_ = false;
};

}  // namespace ddpm
