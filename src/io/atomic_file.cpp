#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace ddpm {

namespace {

constexpr size_t kBufferSize = size_t{1} << 20;

std::string parent_directory(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// The path a write replaces: a symbolic link's target, followed to the end (also when it does not exist yet, as a
// shell's `>` would create it), else the path itself.
Status resolve_link(const std::string& path, std::string* resolved) {
  std::string current = path;
  for (int depth = 0; depth < 40; ++depth) {  // the kernel's own limit on link chains
    struct stat st;
    char target[PATH_MAX];
    ssize_t n;
    if (::lstat(current.c_str(), &st) != 0 || !S_ISLNK(st.st_mode) ||
        (n = ::readlink(current.c_str(), target, sizeof(target) - 1)) <= 0) {
      *resolved = current;
      return Status();
    }
    target[n] = '\0';
    current = target[0] == '/' ? std::string(target) : parent_directory(current) + "/" + target;
  }
  return errorf("cannot write %s: %s", path.c_str(), std::strerror(ELOOP));
}

// Where a write to `path` goes. An existing file that is not a regular one (a device, a pipe, /dev/stdout — whose
// /proc links are no text paths, so they are left to the kernel) is written in place: *direct. Otherwise *target
// is what commit() replaces, links followed, and *mode the permission bits of a file it replaces (-1: none).
// A directory, a file without write permission and a path that cannot be looked up (a link loop) are refused.
Status resolve_destination(const std::string& path, std::string* target, bool* direct, int* mode) {
  *target = path;
  *direct = false;
  *mode = -1;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return errorf("cannot write %s: it is a directory", path.c_str());
    if (::access(path.c_str(), W_OK) != 0) return errorf("cannot write %s: %s", path.c_str(), std::strerror(errno));
    if (!S_ISREG(st.st_mode)) {
      *direct = true;
      return Status();
    }
    // Not the set-id bits: the new file belongs to whoever runs the command.
    *mode = static_cast<int>(st.st_mode & 0777);
  } else if (errno != ENOENT) {
    return errorf("cannot write %s: %s", path.c_str(), std::strerror(errno));
  }
  return resolve_link(path, target);
}

// RemoveOnSignal's table. Each slot moves free -> writing (add copies the path) -> live -> free (remove), and the
// handler takes a live slot to claimed before it reads the path: a slot being refilled is never read half-written,
// and a claimed one is left alone by remove.
constexpr int kSignalSlots = 32;
enum SlotState : int { kFree, kWriting, kLive, kClaimed };
char g_signal_paths[kSignalSlots][PATH_MAX];
std::atomic<int> g_signal_state[kSignalSlots];
std::mutex g_signal_mutex;  // between threads registering; the handler takes no lock
constexpr int kCleanupSignals[] = {SIGINT, SIGTERM, SIGHUP};

void remove_files_and_reraise(int sig) {
  for (int i = 0; i < kSignalSlots; ++i) {
    int live = kLive;
    if (g_signal_state[i].compare_exchange_strong(live, kClaimed, std::memory_order_acq_rel)) {
      (void)::unlink(g_signal_paths[i]);
    }
  }
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

}  // namespace

void RemoveOnSignal::install_handlers() {
  for (int sig : kCleanupSignals) {
    struct sigaction current;
    if (::sigaction(sig, nullptr, &current) != 0 || current.sa_handler != SIG_DFL) continue;  // the program's own
    struct sigaction action;
    std::memset(&action, 0, sizeof(action));
    action.sa_handler = remove_files_and_reraise;
    sigemptyset(&action.sa_mask);
    (void)::sigaction(sig, &action, nullptr);
  }
}

int RemoveOnSignal::add(const std::string& path) {
  static std::once_flag installed;
  std::call_once(installed, install_handlers);
  if (path.empty() || path.size() >= PATH_MAX) return -1;
  std::lock_guard<std::mutex> lock(g_signal_mutex);
  for (int i = 0; i < kSignalSlots; ++i) {
    int free = kFree;
    if (!g_signal_state[i].compare_exchange_strong(free, kWriting, std::memory_order_acq_rel)) continue;
    std::memcpy(g_signal_paths[i], path.c_str(), path.size() + 1);
    g_signal_state[i].store(kLive, std::memory_order_release);
    return i;
  }
  return -1;
}

void RemoveOnSignal::remove(int slot) {
  if (slot < 0 || slot >= kSignalSlots) return;
  std::lock_guard<std::mutex> lock(g_signal_mutex);
  int live = kLive;
  (void)g_signal_state[slot].compare_exchange_strong(live, kFree, std::memory_order_acq_rel);
}

RemoveOnSignal::RemoveOnSignal(const std::string& path) : slot_(add(path)) {}
RemoveOnSignal::~RemoveOnSignal() { remove(slot_); }

AtomicFile::~AtomicFile() { discard(); }

AtomicFile::AtomicFile(AtomicFile&& other) noexcept { *this = std::move(other); }

AtomicFile& AtomicFile::operator=(AtomicFile&& other) noexcept {
  if (this == &other) return *this;
  discard();
  fd_ = other.fd_;
  direct_ = other.direct_;
  finished_ = other.finished_;
  other.finished_ = false;
  signal_slot_ = other.signal_slot_;
  other.signal_slot_ = -1;
  final_path_ = std::move(other.final_path_);
  target_path_ = std::move(other.target_path_);
  temp_path_ = std::move(other.temp_path_);
  buffer_ = std::move(other.buffer_);
  buffered_ = other.buffered_;
  bytes_written_ = other.bytes_written_;
  error_ = std::move(other.error_);
  other.fd_ = -1;
  other.direct_ = false;
  other.error_ = Status();
  other.buffered_ = 0;
  other.bytes_written_ = 0;
  other.temp_path_.clear();
  other.final_path_.clear();
  other.target_path_.clear();
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
  int mode = -1;
  error_ = resolve_destination(final_path_, &target_path_, &direct_, &mode);
  if (!error_.ok()) return error_;
  if (direct_) {
    do {
      fd_ = ::open(target_path_.c_str(), O_WRONLY | O_CLOEXEC);
    } while (fd_ < 0 && errno == EINTR);
    if (fd_ < 0) return fail_with_errno("write");
    buffer_.resize(kBufferSize);
    return Status();
  }
  // The temporary lives next to the destination: rename is only atomic within one filesystem.
  temp_path_ = target_path_ + ".tmp." + std::to_string(static_cast<long>(::getpid()));
  signal_slot_ = RemoveOnSignal::add(temp_path_);
  do {
    fd_ = ::open(temp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  } while (fd_ < 0 && errno == EINTR);
  if (fd_ < 0) {
    Status status = fail_with_errno("write");
    temp_path_.clear();  // nothing was created, so nothing must be unlinked later
    RemoveOnSignal::remove(signal_slot_);
    signal_slot_ = -1;
    return status;
  }
  // The file replaced keeps its permissions (the umask applied to 0644 otherwise).
  if (mode >= 0) (void)::fchmod(fd_, static_cast<mode_t>(mode));
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

Status AtomicFile::finish_writing() {
  if (fd_ < 0) {
    if (!error_.ok()) return error_;
    return errorf("cannot %s %s: file is not open", finished_ ? "finish" : "commit", final_path_.c_str());
  }
  Status status = error_;
  if (status.ok()) status = flush_buffer();
  if (status.ok() && !direct_ && ::fsync(fd_) != 0) status = fail_with_errno("sync");
  // close can report a deferred write error (NFS, quotas): it counts.
  const int closed = ::close(fd_);
  fd_ = -1;
  if (closed != 0 && status.ok()) status = fail_with_errno("write");
  buffer_ = std::vector<char>();
  if (!status.ok()) {
    discard();
    return status;
  }
  finished_ = true;
  return Status();
}

Status AtomicFile::commit() {
  if (!finished_) DDPM_TRY(finish_writing());
  finished_ = false;
  if (direct_) return Status();
  if (::rename(temp_path_.c_str(), target_path_.c_str()) != 0) {
    const Status status = fail_with_errno("create");
    discard();
    return status;
  }
  temp_path_.clear();
  RemoveOnSignal::remove(signal_slot_);
  signal_slot_ = -1;
  buffer_ = std::vector<char>();
  // Makes the rename itself durable. Best effort: some filesystems refuse fsync on directories.
  const int dir_fd = ::open(parent_directory(target_path_).c_str(), O_RDONLY | O_CLOEXEC);
  if (dir_fd >= 0) {
    (void)::fsync(dir_fd);
    ::close(dir_fd);
  }
  return Status();
}

void AtomicFile::discard() {
  finished_ = false;
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!temp_path_.empty()) {
    ::unlink(temp_path_.c_str());
    temp_path_.clear();
  }
  RemoveOnSignal::remove(signal_slot_);
  signal_slot_ = -1;
  buffered_ = 0;
  buffer_ = std::vector<char>();
}

Status write_file_atomically(const std::string& path, const void* data, size_t size) {
  AtomicFile file;
  DDPM_TRY(file.open(path));
  DDPM_TRY(file.write(data, size));
  return file.commit();
}

std::string temp_directory() {
  const char* dir = std::getenv("TMPDIR");
  return dir && *dir ? dir : "/tmp";
}

Status check_can_write(const std::string& path) {
  if (path.empty()) return errorf("cannot write a file with an empty name");
  // The shell convention for standard output: a file named "-" would surprise whoever typed it.
  if (path == "-") {
    return errorf("-: writing to standard output this way is not supported; name a file (or /dev/stdout)");
  }
  std::string target;
  bool direct;
  int mode;
  DDPM_TRY(resolve_destination(path, &target, &direct, &mode));
  if (direct) return Status();  // opening a pipe would block, or hand its reader an early end of file
  AtomicFile probe;
  DDPM_TRY(probe.open(path));
  probe.discard();
  return Status();
}

namespace {

// `path` with its directory resolved (symbolic links, "..", "."), for comparing files that may not exist yet.
std::string normalised(const std::string& path) {
  std::string resolved;
  if (!resolve_link(path, &resolved).ok()) return path;
  char* dir = ::realpath(parent_directory(resolved).c_str(), nullptr);
  if (!dir) return resolved;
  std::string out(dir);
  std::free(dir);
  return (out == "/" ? out : out + "/") + base_name(resolved);
}

}  // namespace

Status check_distinct_paths(const std::string& output, const std::string& input, const char* role) {
  if (output.empty() || input.empty()) return Status();
  struct stat out_st, in_st;
  const bool out_exists = ::stat(output.c_str(), &out_st) == 0, in_exists = ::stat(input.c_str(), &in_st) == 0;
  bool same;
  if (out_exists && in_exists) {
    // Two names of one device (-o /dev/null twice) harm nothing.
    same = S_ISREG(out_st.st_mode) && out_st.st_dev == in_st.st_dev && out_st.st_ino == in_st.st_ino;
  } else {
    same = out_exists == in_exists && normalised(output) == normalised(input);
  }
  if (same) {
    if (output == input) return errorf("%s: is also %s; choose another output path", output.c_str(), role);
    return errorf("%s: is the same file as %s %s; choose another output path", output.c_str(), role, input.c_str());
  }
  return Status();
}

}  // namespace ddpm
