// Read-only view of a whole file, mmapped when possible.
//
// Checkpoints are read through a mapping so that converting a large model does not need a second copy of it in
// memory and pages are only touched when a tensor is loaded. Files that cannot be mapped (pipes, /proc files,
// filesystems without mmap) are read into memory instead, so callers never need to care which happened.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ddpm/status.h"

namespace ddpm {

class MappedFile {
 public:
  MappedFile() = default;
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  // Replaces whatever this held. Errors name the path ("cannot open x.safetensors: No such file or directory").
  // A file longer than `max_bytes` is refused. What cannot be mapped (a pipe, a device) is read into memory, at
  // most `max_bytes` of it, or when 0 a quarter of this machine's memory up to 2 GiB: /dev/zero given as a model
  // must end in a message, not in the out-of-memory killer.
  Status open(const std::string& path, uint64_t max_bytes = 0);
  // An in-memory "file" (tests, fuzzers, data received from elsewhere) that behaves exactly like an opened one.
  static MappedFile from_bytes(std::string name, std::vector<uint8_t> bytes);
  void close();

  bool is_open() const { return open_; }
  // Never null, even for an empty file, so that memcpy(dst, data(), 0) stays well-defined.
  const uint8_t* data() const { return data_ ? data_ : &kEmpty; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  bool is_mapped() const { return mapping_ != nullptr; }

 private:
  static constexpr uint8_t kEmpty = 0;

  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  void* mapping_ = nullptr;  // munmap target when mapped
  std::vector<uint8_t> buffer_;  // contents when read instead of mapped
  bool open_ = false;
};

// Gives back to the OS the pages that lie wholly inside [data, data + bytes) when that range is part of a live
// mmapped MappedFile (is_mapped()); does nothing otherwise. The mapping is private and read-only, so nothing is
// lost: a page touched again is read again from the file. For weights that were copied into another form and will
// not be read in place for a while.
void release_mapped_pages(const void* data, size_t bytes);

}  // namespace ddpm
