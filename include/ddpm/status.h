// Status: how every fallible library call reports failure.
//
// The library never throws across its API and never exits: a call that can fail on user input (a file, a flag,
// a shape) returns a Status. An ok Status is cheap (no allocation); a failed one carries a one-line message that
// names the thing at fault ("model.ddpm: tensor table entry 12 overruns the file"), ready to print as it is.
// Programmer errors (broken internal invariants) are DDPM_ASSERTs instead: they abort with file:line.
#pragma once

#include <string>
#include <utility>

namespace ddpm {

class Status {
 public:
  Status() = default;
  static Status Error(std::string message) { return Status(std::move(message)); }

  bool ok() const { return !failed_; }
  const std::string& message() const { return message_; }

  // Prefixes the message with context ("loading x.ddpm: " + message); no-op on ok.
  Status& with_context(const std::string& context) {
    if (failed_) message_ = context + ": " + message_;
    return *this;
  }

 private:
  explicit Status(std::string message) : failed_(true), message_(std::move(message)) {
    if (message_.empty()) message_ = "unknown error";
  }
  bool failed_ = false;
  std::string message_;
};

// printf-style constructor for failed statuses.
Status errorf(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Aborts with file:line and the failed expression. For invariants of our own code, never for user input.
[[noreturn]] void assert_fail(const char* expr, const char* file, int line);

}  // namespace ddpm

#define DDPM_ASSERT(cond) \
  do { \
    if (!(cond)) ::ddpm::assert_fail(#cond, __FILE__, __LINE__); \
  } while (0)

// Returns early from the enclosing function when `expr` yields a failed Status.
#define DDPM_TRY(expr) \
  do { \
    ::ddpm::Status ddpm_try_status_ = (expr); \
    if (!ddpm_try_status_.ok()) return ddpm_try_status_; \
  } while (0)
