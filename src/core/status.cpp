#include "ddpm/status.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <vector>

namespace ddpm {

Status errorf(const char* format, ...) {
  va_list args;
  va_start(args, format);
  va_list copy;
  va_copy(copy, args);
  int length = std::vsnprintf(nullptr, 0, format, copy);
  va_end(copy);
  std::string message;
  if (length > 0) {
    std::vector<char> buffer(static_cast<size_t>(length) + 1);
    std::vsnprintf(buffer.data(), buffer.size(), format, args);
    message.assign(buffer.data(), static_cast<size_t>(length));
  }
  va_end(args);
  return Status::Error(std::move(message));
}

void assert_fail(const char* expr, const char* file, int line) {
  std::fprintf(stderr, "ddpm: internal error: assertion `%s` failed at %s:%d\n", expr, file, line);
  std::abort();
}

}  // namespace ddpm
