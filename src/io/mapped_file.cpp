#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <new>

namespace ddpm {

namespace {

// Owns a descriptor so that every early return closes it.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Reads until end of file: the size of special files is unknown (st_size is 0 for /proc files and pipes).
Status too_long(const std::string& path, uint64_t max_bytes) {
  return errorf("cannot read %s: longer than %llu bytes, the most it may hold here", path.c_str(),
                static_cast<unsigned long long>(max_bytes));
}

Status read_all(int fd, const std::string& path, uint64_t size_hint, uint64_t max_bytes, std::vector<uint8_t>* out) {
  try {
    out->clear();
    size_t capacity = size_hint > 0 && size_hint < (uint64_t{1} << 40) ? static_cast<size_t>(size_hint) + 1 : 65536;
    // One byte past the limit is enough to tell that a stream passed it.
    const uint64_t room = max_bytes < std::numeric_limits<uint64_t>::max() ? max_bytes + 1 : max_bytes;
    capacity = static_cast<size_t>(std::max<uint64_t>(1, std::min<uint64_t>(capacity, room)));
    out->resize(capacity);
    size_t used = 0;
    for (;;) {
      if (used > max_bytes) return too_long(path, max_bytes);
      if (used == out->size()) {
        if (out->size() > std::numeric_limits<size_t>::max() / 2) return errorf("%s: file too large", path.c_str());
        out->resize(static_cast<size_t>(std::min<uint64_t>(out->size() * 2, room)));
      }
      const ssize_t got = ::read(fd, out->data() + used, out->size() - used);
      if (got < 0) {
        if (errno == EINTR) continue;
        return errorf("cannot read %s: %s", path.c_str(), std::strerror(errno));
      }
      if (got == 0) break;
      used += static_cast<size_t>(got);
    }
    out->resize(used);
    out->shrink_to_fit();
    return Status();
  } catch (const std::bad_alloc&) {
    return errorf("cannot read %s: out of memory", path.c_str());
  }
}

// The live read-only private mappings, [begin, end), so that release_mapped_pages never advises memory that is
// not one of them (MADV_DONTNEED on anonymous memory would zero it).
class MappingRegistry {
 public:
  void add(const void* begin, uint64_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    ranges_[reinterpret_cast<uintptr_t>(begin)] = reinterpret_cast<uintptr_t>(begin) + size;
  }
  void remove(const void* begin) {
    std::lock_guard<std::mutex> lock(mutex_);
    ranges_.erase(reinterpret_cast<uintptr_t>(begin));
  }
  bool contains(uintptr_t begin, uintptr_t end) const {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = ranges_.upper_bound(begin);
    if (it == ranges_.begin()) return false;
    --it;
    return begin >= it->first && end <= it->second;
  }

 private:
  mutable std::mutex mutex_;
  std::map<uintptr_t, uintptr_t> ranges_;
};

MappingRegistry& mappings() {
  static MappingRegistry registry;
  return registry;
}

}  // namespace

MappedFile::~MappedFile() { close(); }

MappedFile::MappedFile(MappedFile&& other) noexcept { *this = std::move(other); }

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this == &other) return *this;
  close();
  path_ = std::move(other.path_);
  buffer_ = std::move(other.buffer_);
  mapping_ = other.mapping_;
  size_ = other.size_;
  open_ = other.open_;
  // A moved vector keeps its heap block, so data_ stays valid unless it pointed into the mapping (also kept).
  data_ = other.data_;
  other.mapping_ = nullptr;
  other.data_ = nullptr;
  other.size_ = 0;
  other.open_ = false;
  other.path_.clear();
  other.buffer_.clear();
  return *this;
}

void MappedFile::close() {
  if (mapping_ != nullptr) {
    mappings().remove(mapping_);
    ::munmap(mapping_, static_cast<size_t>(size_));
  }
  mapping_ = nullptr;
  data_ = nullptr;
  size_ = 0;
  buffer_ = std::vector<uint8_t>();
  open_ = false;
  path_.clear();
}

Status MappedFile::open(const std::string& path, uint64_t max_bytes) {
  close();
  int raw_fd;
  do {
    raw_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (raw_fd < 0 && errno == EINTR);
  if (raw_fd < 0) return errorf("cannot open %s: %s", path.c_str(), std::strerror(errno));
  FileDescriptor fd(raw_fd);

  struct stat info;
  if (::fstat(fd.get(), &info) != 0) return errorf("cannot stat %s: %s", path.c_str(), std::strerror(errno));
  if (S_ISDIR(info.st_mode)) return errorf("cannot read %s: it is a directory", path.c_str());

  path_ = path;
  if (S_ISREG(info.st_mode) && max_bytes > 0 && static_cast<uint64_t>(info.st_size) > max_bytes) {
    return too_long(path, max_bytes);
  }
  if (max_bytes == 0) {
    // Whatever a pipe brings in must fit in memory next to the work done with it.
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
    const uint64_t quarter = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) / 4
                                                   : std::numeric_limits<uint64_t>::max();
    max_bytes = std::min<uint64_t>(quarter, uint64_t{2} << 30);
  }
  if (S_ISREG(info.st_mode) && info.st_size > 0 &&
      static_cast<uint64_t>(info.st_size) <= std::numeric_limits<size_t>::max()) {
    void* mapping = ::mmap(nullptr, static_cast<size_t>(info.st_size), PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (mapping != MAP_FAILED) {
      mappings().add(mapping, static_cast<uint64_t>(info.st_size));
      mapping_ = mapping;
      data_ = static_cast<const uint8_t*>(mapping);
      size_ = static_cast<uint64_t>(info.st_size);
      open_ = true;
      return Status();
    }
  }
  const uint64_t size_hint = S_ISREG(info.st_mode) && info.st_size > 0 ? static_cast<uint64_t>(info.st_size) : 0;
  Status status = read_all(fd.get(), path, size_hint, max_bytes, &buffer_);
  if (!status.ok()) {
    close();
    return status;
  }
  data_ = buffer_.empty() ? nullptr : buffer_.data();
  size_ = buffer_.size();
  open_ = true;
  return Status();
}

MappedFile MappedFile::from_bytes(std::string name, std::vector<uint8_t> bytes) {
  MappedFile file;
  file.path_ = std::move(name);
  file.buffer_ = std::move(bytes);
  file.data_ = file.buffer_.empty() ? nullptr : file.buffer_.data();
  file.size_ = file.buffer_.size();
  file.open_ = true;
  return file;
}

void release_mapped_pages(const void* data, size_t bytes) {
  const long page_size = ::sysconf(_SC_PAGESIZE);
  if (page_size <= 0 || !data || bytes == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(page_size);
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) / page * page;
  // Only inside a live MappedFile mapping (anything else is left alone); advice only: if the kernel declines, the
  // pages simply stay.
  if (end > begin && mappings().contains(begin, end)) {
    ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }
}

}  // namespace ddpm
