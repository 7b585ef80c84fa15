#include "graph/profile.h"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace ddpm::profile {
namespace {

struct Entry {
  double seconds = 0.0, cpu_seconds = 0.0;
  long long count = 0;
};

// One instance, destroyed at exit: the report is printed from its destructor.
class Profile {
 public:
  ~Profile() {
    if (kinds_.empty()) return;
    double total = 0.0;
    for (const auto& [key, e] : kinds_) total += e.seconds;
    std::fprintf(stderr, "\nDDPM_PROFILE: %lld compute() calls, %.3f s in nodes (%.2f ms per call)\n", calls_, total,
                 calls_ ? total / calls_ * 1e3 : 0.0);
    print("by op kind", kinds_, total, 100);
    print("by node (op, output shape <- input shapes)", nodes_, total, 400);
  }
  void record(const Tensor& t, bool backward, double seconds, double cpu_seconds) {
    std::lock_guard<std::mutex> lock(mutex_);
    const std::string phase = backward ? "bwd " : "fwd ";
    add(&kinds_, phase + op_name(t.op), seconds, cpu_seconds);
    std::string key = phase + op_name(t.op) + " " + t.shape_string() + " <-";
    for (const Tensor* s : t.src) {
      if (s) key += " " + s->shape_string();
    }
    add(&nodes_, key, seconds, cpu_seconds);
  }
  void count_call() {
    std::lock_guard<std::mutex> lock(mutex_);
    ++calls_;
  }
  void reset() {
    std::lock_guard<std::mutex> lock(mutex_);
    kinds_.clear();
    nodes_.clear();
    calls_ = 0;
  }

 private:
  static void add(std::map<std::string, Entry>* m, const std::string& key, double seconds, double cpu_seconds) {
    Entry& e = (*m)[key];
    e.seconds += seconds;
    e.cpu_seconds += cpu_seconds;
    ++e.count;
  }
  void print(const char* title, const std::map<std::string, Entry>& m, double total, size_t limit) const {
    std::vector<std::pair<std::string, Entry>> rows(m.begin(), m.end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.seconds > b.second.seconds; });
    std::fprintf(stderr, "%s:\n%10s %6s %12s %8s  %s\n", title, "ms/call", "%", "cpu0 ms/call", "nodes", "what");
    for (size_t i = 0; i < rows.size() && i < limit; ++i) {
      const Entry& e = rows[i].second;
      const double per_call = calls_ ? 1e3 / calls_ : 0.0;
      std::fprintf(stderr, "%10.3f %6.2f %12.3f %8.1f  %s\n", e.seconds * per_call,
                   total > 0 ? 100.0 * e.seconds / total : 0.0, e.cpu_seconds * per_call,
                   calls_ ? double(e.count) / calls_ : 0.0, rows[i].first.c_str());
    }
  }
  std::mutex mutex_;
  std::map<std::string, Entry> kinds_, nodes_;
  long long calls_ = 0;
};

Profile& instance() {
  static Profile p;
  return p;
}

}  // namespace

bool enabled() {
  static const bool on = [] {
    const char* v = std::getenv("DDPM_PROFILE");
    if (!v || !*v || std::string(v) == "0") return false;
    instance();  // constructed now, so it is destroyed (and reports) after everything that records into it
    return true;
  }();
  return on;
}

void record(const Tensor& t, bool backward, double seconds, double cpu_seconds) {
  instance().record(t, backward, seconds, cpu_seconds);
}

double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}
void count_call() { instance().count_call(); }
void reset() {
  if (enabled()) instance().reset();
}

}  // namespace ddpm::profile
