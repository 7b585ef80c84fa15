#include "ddpm/threadpool.h"

#include <sched.h>

#include <cstdio>
#include <fstream>
#include <set>
#include <string>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace ddpm {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Workers spin this many relax cycles before sleeping: ops follow each other within microseconds during a
// forward pass, and a futex wake-up per op would cost more than the small ops themselves.
constexpr int kSpinIterations = 20000;

}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = physical_cores();
  for (int t = 1; t < threads; ++t) workers_.emplace_back([this, t] { worker_loop(t); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
}

void ThreadPool::work(int thread) {
  for (;;) {
    int64_t task = next_task_.fetch_add(1, std::memory_order_relaxed);
    if (task >= job_tasks_) break;
    (*job_)(task, thread);
  }
}

void ThreadPool::run(int64_t tasks, const std::function<void(int64_t, int)>& fn) {
  if (tasks <= 0) return;
  if (workers_.empty() || tasks == 1) {
    for (int64_t task = 0; task < tasks; ++task) fn(task, 0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_tasks_ = tasks;
    next_task_.store(0);
    busy_.store(static_cast<int>(workers_.size()));
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  work(0);
  for (int spin = 0; spin < kSpinIterations && busy_.load() != 0; ++spin) cpu_relax();
  if (busy_.load() != 0) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_.load() == 0; });
  }
  job_ = nullptr;
}

void ThreadPool::worker_loop(int thread) {
  uint64_t seen = 0;
  for (;;) {
    for (int spin = 0; spin < kSpinIterations && generation_.load() == seen; ++spin) cpu_relax();
    if (generation_.load() == seen) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
    }
    seen = generation_.load();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
    }
    work(thread);
    if (busy_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_.notify_one();
    }
  }
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
