// Zip directory reader for torch.save archives: lists the stored entries of a zip held in memory.
//
// torch writes every record uncompressed (method 0), 64-byte aligned, with zip64 records even for small files and
// with zero sizes in the local headers, so the central directory is the only trustworthy source of sizes. We do not
// inflate anything: a compressed or encrypted entry is an error naming the entry. Because the input may be hostile,
// every offset is checked against the file, entries may not overlap each other or the central directory, and names
// and counts are bounded.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ddpm/status.h"

namespace ddpm {

struct ZipEntry {
  std::string name;
  uint64_t data_offset = 0;  // absolute offset in the file of the first data byte
  uint64_t size = 0;         // bytes of data (stored, so compressed size == uncompressed size)
};

// Generous bounds: a torch archive has one entry per storage plus a handful of records.
constexpr uint64_t kZipMaxEntries = 1u << 20;
constexpr uint64_t kZipMaxNameLength = 4096;

// Parses the end-of-central-directory (and zip64) records and the central directory of the zip in
// [data, data + size). On success `entries` holds every entry in central-directory order. `name` only labels
// error messages. Pure function: no global state, never reads outside the span.
Status read_zip_directory(const uint8_t* data, uint64_t size, const std::string& name, std::vector<ZipEntry>* entries);

// Returns the entry called `entry_name`, or nullptr. Linear; archives are small.
const ZipEntry* find_zip_entry(const std::vector<ZipEntry>& entries, const std::string& entry_name);

}  // namespace ddpm
