#include "ddpm/threadpool.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <set>
#include <string>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "ddpm/status.h"

namespace ddpm {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Waiting threads first spin (~0.2 ms of pause): ops follow each other within microseconds during a forward pass,
// and a futex wake-up per op would cost more than the small ops themselves. Then they yield for a while, which on
// an oversubscribed machine lets a descheduled pool thread sharing this CPU run; then they sleep.
constexpr int kPauseSpins = 8000;
constexpr int kYieldSpins = 300;

// One step of a wait loop; false once the thread should sleep instead.
inline bool wait_step(int spin) {
  if (spin < kPauseSpins) {
    cpu_relax();
    return true;
  }
  if (spin < kPauseSpins + kYieldSpins) {
    std::this_thread::yield();
    return true;
  }
  return false;
}

// The job word: generation in the top 24 bits, then the front and back ends of the unclaimed task range [front, back)
// in 20 bits each.
constexpr int kEndBits = 20;
constexpr uint64_t kEndMask = (uint64_t{1} << kEndBits) - 1;
constexpr int64_t kMaxTasksPerJob = int64_t{1} << kEndBits;
constexpr uint32_t kGenerationMask = (1u << (64 - 2 * kEndBits)) - 1;

constexpr uint32_t generation_of(uint64_t state) { return static_cast<uint32_t>(state >> (2 * kEndBits)); }
constexpr int64_t front_of(uint64_t state) { return static_cast<int64_t>((state >> kEndBits) & kEndMask); }
constexpr int64_t back_of(uint64_t state) { return static_cast<int64_t>(state & kEndMask); }
constexpr uint64_t job_state(uint32_t generation, int64_t tasks) {
  return (static_cast<uint64_t>(generation) << (2 * kEndBits)) | static_cast<uint64_t>(tasks);
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = physical_cores();
  for (int t = 1; t < threads; ++t) workers_.emplace_back([this, t] { worker_loop(t); });
}

ThreadPool::~ThreadPool() {
  stopping_.store(true);
  {
    std::lock_guard<std::mutex> lock(mutex_);  // orders the flag before any worker's predicate check
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
}

void ThreadPool::work(uint32_t generation, int thread) {
  const bool front = thread == 0;
  // Claims take a share of what is left (guided scheduling): a job of many small tasks costs a few compare-exchanges
  // on the shared word instead of one per task, and the last tasks still go one at a time, which balances the
  // threads. Completed tasks are counted here and published once: on cores far apart each update of a shared line
  // costs hundreds of ns.
  const int64_t share = 2 * static_cast<int64_t>(size());
  int64_t finished = 0, tasks = 0;
  for (;;) {
    uint64_t state = state_.load(std::memory_order_acquire);
    if (generation_of(state) != generation) break;
    const int64_t first = front_of(state), end = back_of(state);
    if (first >= end) break;
    const int64_t take = std::max<int64_t>(1, (end - first) / share);
    const uint64_t claimed = front ? state + (static_cast<uint64_t>(take) << kEndBits) : state - take;
    if (!state_.compare_exchange_weak(state, claimed, std::memory_order_acq_rel)) continue;
    // Read after the claim, which succeeded on the current job's word: these are that job's.
    const std::function<void(int64_t, int)>* job = job_.load(std::memory_order_relaxed);
    tasks = job_tasks_.load(std::memory_order_relaxed);
    // The caller runs its tasks in order from the front, the workers theirs in reverse from the back, so a repeated
    // job splits the same way every time (threadpool.h).
    for (int64_t i = 0; i < take; ++i) {
      const int64_t task = front ? first + i : end - 1 - i;
      if (timing_on_.load(std::memory_order_relaxed)) {
        const int64_t start = now_ns();
        (*job)(task, thread);
        busy_ns_.fetch_add(now_ns() - start, std::memory_order_relaxed);
        timed_tasks_.fetch_add(1, std::memory_order_relaxed);
      } else {
        (*job)(task, thread);
      }
    }
    finished += take;
  }
  if (finished > 0 && done_.fetch_add(finished) + finished == tasks && caller_sleeping_.load()) {
    { std::lock_guard<std::mutex> lock(mutex_); }
    finished_.notify_one();
  }
}

void ThreadPool::run(int64_t tasks, const std::function<void(int64_t, int)>& fn) {
  if (tasks <= 0) return;
  if (workers_.empty() || tasks == 1) {
    for (int64_t task = 0; task < tasks; ++task) fn(task, 0);
    return;
  }
  if (tasks >= kMaxTasksPerJob) {  // more than the job word counts: successive jobs of consecutive tasks
    constexpr int64_t kBatch = kMaxTasksPerJob - 1;
    for (int64_t first = 0; first < tasks; first += kBatch) {
      run(std::min(kBatch, tasks - first), [&](int64_t task, int thread) { fn(first + task, thread); });
    }
    return;
  }
  const bool timed = timing_on_.load(std::memory_order_relaxed);
  const int64_t start = timed ? now_ns() : 0;
  job_.store(&fn, std::memory_order_relaxed);
  job_tasks_.store(tasks, std::memory_order_relaxed);
  done_.store(0, std::memory_order_relaxed);
  generation_ = (generation_ + 1) & kGenerationMask;
  if (generation_ == 0) generation_ = 1;  // 0 is the idle pool's word
  state_.store(job_state(generation_, tasks));
  if (sleeping_workers_.load() > 0) {
    { std::lock_guard<std::mutex> lock(mutex_); }
    wake_.notify_all();
  }
  work(generation_, 0);
  for (int spin = 0; done_.load(std::memory_order_acquire) != tasks; ++spin) {
    if (wait_step(spin)) continue;
    std::unique_lock<std::mutex> lock(mutex_);
    caller_sleeping_.store(true);
    finished_.wait(lock, [&] { return done_.load() == tasks; });
    caller_sleeping_.store(false);
  }
  if (timed) {
    wall_ns_.fetch_add(now_ns() - start, std::memory_order_relaxed);
    timed_jobs_.fetch_add(1, std::memory_order_relaxed);
  }
}

void ThreadPool::set_timing(bool on) { timing_on_.store(on); }

ThreadPool::Timing ThreadPool::timing() const {
  Timing t;
  t.jobs = timed_jobs_.load();
  t.tasks = timed_tasks_.load();
  t.wall_seconds = 1e-9 * static_cast<double>(wall_ns_.load());
  t.busy_seconds = 1e-9 * static_cast<double>(busy_ns_.load());
  return t;
}

void ThreadPool::worker_loop(int thread) {
  uint32_t seen = 0;
  for (;;) {
    uint32_t generation = seen;
    for (int spin = 0; !stopping_.load(std::memory_order_relaxed); ++spin) {
      generation = generation_of(state_.load(std::memory_order_acquire));
      if (generation != seen) break;
      if (wait_step(spin)) continue;
      std::unique_lock<std::mutex> lock(mutex_);
      sleeping_workers_.fetch_add(1);
      wake_.wait(lock, [&] { return stopping_.load() || generation_of(state_.load()) != seen; });
      sleeping_workers_.fetch_sub(1);
      spin = 0;
    }
    if (stopping_.load()) return;
    seen = generation;
    work(generation, thread);
  }
}

// Same die: 20–80 ns one way; session 13's VM, whose two cores share no cache: 230 ns.
constexpr double kFarHandoffNs = 150.0;
constexpr int kHandoffAttempts = 3;

double ThreadPool::handoff_ns() {
  struct alignas(64) Line {
    std::atomic<int64_t> value{0};
  };
  Line ball;
  std::atomic<bool> joined{false}, abandoned{false};
  constexpr int kBatches = 5, kTrips = 64;
  constexpr int64_t kPatienceNs = 20000000;
  double best = 0.0;
  // Task 0 runs on the caller, task 1 on whichever worker claims it; if the caller has to take task 1 itself
  // (no worker woke in time), it finds nothing to do.
  run(2, [&](int64_t task, int thread) {
    if (task == 1) {
      if (thread == 0) return;
      joined.store(true);
      for (int64_t expect = 1; expect <= 2 * kBatches * kTrips; expect += 2) {
        while (ball.value.load(std::memory_order_acquire) != expect) {
          if (abandoned.load(std::memory_order_relaxed)) return;
          cpu_relax();
        }
        ball.value.store(expect + 1, std::memory_order_release);
      }
      return;
    }
    const int64_t deadline = now_ns() + kPatienceNs;
    while (!joined.load()) {
      if (now_ns() > deadline) {
        abandoned.store(true);
        return;
      }
      cpu_relax();
    }
    int64_t sent = 0;
    for (int batch = 0; batch < kBatches; ++batch) {
      const int64_t start = now_ns();
      for (int trip = 0; trip < kTrips; ++trip) {
        ball.value.store(++sent, std::memory_order_release);
        ++sent;
        while (ball.value.load(std::memory_order_acquire) != sent) {
          if (now_ns() - start > kPatienceNs) {
            abandoned.store(true);
            return;
          }
          cpu_relax();
        }
      }
      const double one_way = static_cast<double>(now_ns() - start) / (2.0 * kTrips);
      if (best == 0.0 || one_way < best) best = one_way;
    }
  });
  return abandoned.load() ? 0.0 : best;
}

bool ThreadPool::cores_far_apart() {
  // A worker that did not answer in time (a busy machine) leaves the question open for a later call, a few times.
  if (far_apart_ < 0 && handoff_attempts_ < kHandoffAttempts) {
    ++handoff_attempts_;
    const double one_way = workers_.empty() ? 0.0 : handoff_ns();
    handoff_ns_measured_ = one_way;
    if (workers_.empty() || one_way > 0.0 || handoff_attempts_ == kHandoffAttempts) {
      far_apart_ = one_way >= kFarHandoffNs ? 1 : 0;
    }
  }
  return far_apart_ == 1;
}

int ThreadPool::physical_cores() {
  // Distinct (package, core) pairs among the CPUs we may run on: SMT siblings share a core's FMA units, so
  // running two compute threads on them only adds contention.
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  int allowed_count = 0;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0) allowed_count = CPU_COUNT(&allowed);
  std::set<std::pair<int, int>> cores;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (allowed_count > 0 && !CPU_ISSET(cpu, &allowed)) continue;
    std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream core_file(base + "core_id"), package_file(base + "physical_package_id");
    int core = -1, package = -1;
    if (!(core_file >> core) || !(package_file >> package)) continue;
    cores.insert({package, core});
  }
  int count = static_cast<int>(cores.size());
  if (count <= 0) count = allowed_count > 0 ? allowed_count : static_cast<int>(std::thread::hardware_concurrency());
  return count > 0 ? count : 1;
}

}  // namespace ddpm
