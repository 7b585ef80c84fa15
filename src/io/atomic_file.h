// Writes a file so that readers only ever see the old contents or the complete new ones.
//
// Output (converted models, checkpoints, images) goes to "<path>.tmp.<pid>" in the destination directory, and
// commit() fsyncs it and renames it over the destination. A crash, a full disk or an error anywhere before commit
// leaves the destination untouched, and the destructor removes the temporary file. The first write error sticks:
// later writes and commit() return it, so callers may check only the final commit().
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "ddpm/status.h"

namespace ddpm {

class AtomicFile {
 public:
  AtomicFile() = default;
  ~AtomicFile();
  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&& other) noexcept;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  Status open(const std::string& final_path);
  Status write(const void* data, size_t size);
  // Flushes, fsyncs, renames over final_path and fsyncs the directory. The object is closed afterwards either way.
  Status commit();
  // Drops the temporary file without touching final_path (what the destructor does when not committed).
  void discard();

  const std::string& final_path() const { return final_path_; }
  const std::string& temp_path() const { return temp_path_; }
  uint64_t bytes_written() const { return bytes_written_; }

 private:
  Status flush_buffer();
  Status write_fully(const void* data, size_t size);
  Status fail_with_errno(const char* action);

  int fd_ = -1;
  std::string final_path_;
  std::string temp_path_;
  std::vector<char> buffer_;  // coalesces the many small writes of headers and tables
  size_t buffered_ = 0;
  uint64_t bytes_written_ = 0;
  Status error_;
};

// Convenience for small files written in one piece.
Status write_file_atomically(const std::string& path, const void* data, size_t size);

// Fails now, with the message a later write would give, when `path` cannot be created (missing directory, no
// permission): long jobs check their outputs before they start rather than after. Leaves nothing behind.
Status check_can_write(const std::string& path);

}  // namespace ddpm
