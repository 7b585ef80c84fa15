#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace ddpm {

namespace {

constexpr size_t kBufferSize = size_t{1} << 20;

std::string parent_directory(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

AtomicFile::~AtomicFile() { discard(); }

AtomicFile::AtomicFile(AtomicFile&& other) noexcept { *this = std::move(other); }

AtomicFile& AtomicFile::operator=(AtomicFile&& other) noexcept {
  if (this == &other) return *this;
  discard();
  fd_ = other.fd_;
  final_path_ = std::move(other.final_path_);
  temp_path_ = std::move(other.temp_path_);
  buffer_ = std::move(other.buffer_);
  buffered_ = other.buffered_;
  bytes_written_ = other.bytes_written_;
  error_ = std::move(other.error_);
  other.fd_ = -1;
  other.buffered_ = 0;
  other.bytes_written_ = 0;
  other.temp_path_.clear();
  other.final_path_.clear();
  return *this;
}

Status AtomicFile::fail_with_errno(const char* action) {
  const int saved = errno;
  if (error_.ok()) error_ = errorf("cannot %s %s: %s", action, final_path_.c_str(), std::strerror(saved));
  return error_;
}

Status AtomicFile::open(const std::string& final_path) {
  discard();
  error_ = Status();
  bytes_written_ = 0;
  buffered_ = 0;
  if (final_path.empty()) return errorf("cannot write a file with an empty name");
  final_path_ = final_path;
  // The temporary lives next to the destination: rename is only atomic within one filesystem.
  temp_path_ = final_path + ".tmp." + std::to_string(static_cast<long>(::getpid()));
  do {
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  } while (fd_ < 0 && errno == EINTR);
  if (fd_ < 0) {
    Status status = fail_with_errno("write");
    temp_path_.clear();  // nothing was created, so nothing must be unlinked later
    return status;
  }
  buffer_.resize(kBufferSize);
  return Status();
}

Status AtomicFile::write_fully(const void* data, size_t size) {
  const char* bytes = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t put = ::write(fd_, bytes, size);
    if (put < 0) {
      if (errno == EINTR) continue;
      return fail_with_errno("write");
    }
    bytes += put;
    size -= static_cast<size_t>(put);
  }
  return Status();
}

Status AtomicFile::flush_buffer() {
  if (buffered_ == 0) return Status();
  Status status = write_fully(buffer_.data(), buffered_);
  buffered_ = 0;
  return status;
}

Status AtomicFile::write(const void* data, size_t size) {
  if (!error_.ok()) return error_;
  if (fd_ < 0) return errorf("cannot write %s: file is not open", final_path_.c_str());
  if (size == 0) return Status();
  bytes_written_ += size;
  if (size <= buffer_.size() - buffered_) {
    std::memcpy(buffer_.data() + buffered_, data, size);
    buffered_ += size;
    return Status();
  }
  DDPM_TRY(flush_buffer());
  if (size < buffer_.size()) {
    std::memcpy(buffer_.data(), data, size);
    buffered_ = size;
    return Status();
  }
  return write_fully(data, size);
}

Status AtomicFile::commit() {
  if (fd_ < 0 && error_.ok()) return errorf("cannot commit %s: file is not open", final_path_.c_str());
  Status status = error_;
  if (status.ok()) status = flush_buffer();
  if (status.ok() && ::fsync(fd_) != 0) status = fail_with_errno("sync");
  if (fd_ >= 0) {
    // close can report a deferred write error (NFS, quotas): it counts.
    const int closed = ::close(fd_);
    fd_ = -1;
    if (closed != 0 && status.ok()) status = fail_with_errno("write");
  }
  if (status.ok() && ::rename(temp_path_.c_str(), final_path_.c_str()) != 0) status = fail_with_errno("create");
  if (!status.ok()) {
    discard();
    return status;
  }
  temp_path_.clear();
  buffer_ = std::vector<char>();
  // Makes the rename itself durable. Best effort: some filesystems refuse fsync on directories.
  const int dir_fd = ::open(parent_directory(final_path_).c_str(), O_RDONLY | O_CLOEXEC);
  if (dir_fd >= 0) {
    (void)::fsync(dir_fd);
    ::close(dir_fd);
  }
  return Status();
}

void AtomicFile::discard() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!temp_path_.empty()) {
    ::unlink(temp_path_.c_str());
    temp_path_.clear();
  }
  buffered_ = 0;
  buffer_ = std::vector<char>();
}

Status write_file_atomically(const std::string& path, const void* data, size_t size) {
  AtomicFile file;
  DDPM_TRY(file.open(path));
  DDPM_TRY(file.write(data, size));
  return file.commit();
}

Status check_can_write(const std::string& path) {
  AtomicFile probe;
  DDPM_TRY(probe.open(path));
  probe.discard();
  return Status();
}

}  // namespace ddpm
