// A persistent pool of worker threads. The calling thread takes part as thread 0.
//
// run(n, fn) calls fn(task, thread) for every task in [0, n) and returns when all are done. Tasks are handed out
// dynamically, so callers must make each task's result independent of which thread runs it (they do: every op
// owns disjoint output elements per task and keeps a fixed reduction order) — that is what makes results
// bit-identical for any thread count. `thread` indexes per-thread scratch memory.
//
// run() waits for the tasks, not for the workers: a worker that is descheduled (an oversubscribed machine) and wakes
// after the caller has taken every task simply finds none, instead of holding the caller up. The caller takes tasks
// from the front and the workers from the back, so with two threads a repeated job splits the same way every time
// and each thread finds the output it wrote last time, and the inputs written by its part of the previous op, in
// its own cache.
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

  // Where parallel time goes (DDPM_PROFILE): with timing on, every run() of more than one task adds its wall time,
  // and every task its thread's time inside fn, so busy / (size() × wall) is the share of the parallel regions the
  // threads spent working rather than waiting for each other. Off by default: two clock reads per task.
  struct Timing {
    long long jobs = 0, tasks = 0;
    double wall_seconds = 0.0, busy_seconds = 0.0;
  };
  void set_timing(bool on);
  Timing timing() const;

  static int physical_cores();

  // Whether the pool's threads run on cores far apart: a cache line written by one takes at least ~150 ns to reach
  // another (measured at the first call, by passing a line between the caller and a worker: under 1 ms).
  // There, storing to lines another core has read waits for that core, one line at a time (session 13's VM: 230 ns
  // one way, 5.7 GB/s against 90 GB/s for a core's own lines), and ops do better streaming their outputs
  // (ExecContext::stream_outputs). False with one thread, or when no worker answered in time.
  bool cores_far_apart();
  // What that measurement found, one way in ns (0: not measured, or no worker answered in time).
  double handoff_ns_measured() const { return handoff_ns_measured_; }

 private:
  void worker_loop(int thread);
  // Claims and runs tasks of job `generation` until none is left or a newer job replaced it.
  void work(uint32_t generation, int thread);
  double handoff_ns();  // one way, the cheapest of a few batches; 0 if no worker joined

  std::vector<std::thread> workers_;
  // The current job: its generation and the range of tasks not yet claimed. A task is claimed by a compare-exchange
  // on the whole word, so a worker still holding an older generation cannot claim a task of a newer job by mistake.
  std::atomic<uint64_t> state_{0};
  std::atomic<const std::function<void(int64_t, int)>*> job_{nullptr};
  std::atomic<int64_t> job_tasks_{0};
  std::atomic<int64_t> done_{0};
  uint32_t generation_ = 0;  // caller side only
  // Sleeping, after spinning found nothing: workers wait on wake_, the caller on finished_.
  std::mutex mutex_;
  std::condition_variable wake_, finished_;
  std::atomic<int> sleeping_workers_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> timing_on_{false};
  std::atomic<long long> timed_jobs_{0}, timed_tasks_{0};
  std::atomic<int64_t> wall_ns_{0}, busy_ns_{0};
  int far_apart_ = -1;  // cores_far_apart(): unknown (-1), no (0), yes (1); caller side only
  int handoff_attempts_ = 0;
  double handoff_ns_measured_ = 0.0;
};

}  // namespace ddpm
