// Writes a file so that readers only ever see the old contents or the complete new ones.
//
// Output (converted models, checkpoints, images) goes to "<path>.tmp.<pid>" in the destination directory, and
// commit() fsyncs it and renames it over the destination. A crash, a full disk or an error anywhere before commit
// leaves the destination untouched, and the destructor removes the temporary file; so does SIGINT, SIGTERM or
// SIGHUP (RemoveOnSignal) unless the program handles that signal itself. The first write error sticks: later writes
// and commit() return it, so callers may check only the final commit().
//
// What a shell's `>` would do is kept where a rename would break it: a symbolic link is followed (the file it
// points to is replaced, the link stays), a replaced file keeps its permission bits (not its owner, and other hard
// links to it keep the old contents), a read-only file is refused, and a destination that is not a regular file
// (/dev/null, a pipe, /dev/stdout) is written directly, without the atomicity.
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
  // Flushes, fsyncs and closes the temporary file without renaming it: a command that writes several files does
  // this for all of them before it commits any, so that a late failure replaces none. The file descriptor is
  // released (many files can wait). On failure the temporary file is removed.
  Status finish_writing();
  // Flushes, fsyncs (finish_writing, unless done), renames over final_path and fsyncs the directory. The object is
  // closed afterwards either way.
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
  bool direct_ = false;  // the destination is a device or pipe, written in place
  bool finished_ = false;  // finish_writing() succeeded: the temporary file is complete and closed
  int signal_slot_ = -1;  // RemoveOnSignal's registration of temp_path_
  std::string final_path_;  // as the caller named it, for messages
  std::string target_path_;  // what commit() renames over: final_path_ with a symbolic link resolved
  std::string temp_path_;
  std::vector<char> buffer_;  // coalesces the many small writes of headers and tables
  size_t buffered_ = 0;
  uint64_t bytes_written_ = 0;
  Status error_;
};

// Convenience for small files written in one piece.
Status write_file_atomically(const std::string& path, const void* data, size_t size);

// Fails now, with the message a later write would give, when `path` cannot be created (missing directory, no
// permission, a directory): long jobs check their outputs before they start rather than after. Leaves nothing
// behind.
Status check_can_write(const std::string& path);

// $TMPDIR when set, else /tmp: where scratch files go that have no better place.
std::string temp_directory();

// Fails when writing `output` would overwrite `input`, the file a command reads (or another of its outputs): the same
// regular file (same inode, whatever the path's spelling or links), or the same path once resolved when either does
// not exist yet. `role` names the other file in the message, e.g. "the input model".
Status check_distinct_paths(const std::string& output, const std::string& input, const char* role);

// While alive, `path` is unlinked if the process is stopped by SIGINT, SIGTERM or SIGHUP (the handler is installed
// for each of them whose disposition is still the default, then re-raises the signal), so that an interrupted
// command leaves no scratch file behind. At most 32 paths at a time; beyond that the path is simply not covered.
class RemoveOnSignal {
 public:
  explicit RemoveOnSignal(const std::string& path);
  ~RemoveOnSignal();
  RemoveOnSignal(const RemoveOnSignal&) = delete;
  RemoveOnSignal& operator=(const RemoveOnSignal&) = delete;

  static int add(const std::string& path);  // the slot, or -1
  static void remove(int slot);
  // Installs the handler for each of the three signals whose disposition is the default now. The first add() does;
  // a program that resets a signal to its default later (a test harness's child) calls it again.
  static void install_handlers();

 private:
  int slot_;
};

}  // namespace ddpm
