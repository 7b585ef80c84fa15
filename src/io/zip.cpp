#include "io/zip.h"

#include <algorithm>
#include <initializer_list>
#include <unordered_set>

namespace ddpm {
namespace {

constexpr uint32_t kLocalHeaderSignature = 0x04034b50;
constexpr uint32_t kCentralHeaderSignature = 0x02014b50;
constexpr uint32_t kEndSignature = 0x06054b50;
constexpr uint32_t kZip64EndSignature = 0x06064b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;

constexpr uint64_t kLocalHeaderSize = 30;
constexpr uint64_t kCentralHeaderSize = 46;
constexpr uint64_t kEndSize = 22;
constexpr uint64_t kZip64EndMinSize = 56;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint64_t kMaxCommentLength = 0xFFFF;

constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kFlagEncrypted = 0x0001;
constexpr uint16_t kFlagStrongEncryption = 0x0040;

uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t le32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t le64(const uint8_t* p) { return static_cast<uint64_t>(le32(p)) | (static_cast<uint64_t>(le32(p + 4)) << 32); }

// True when [offset, offset + length) lies inside [0, limit); no overflow.
bool range_fits(uint64_t offset, uint64_t length, uint64_t limit) {
  return offset <= limit && length <= limit - offset;
}

struct Directory {
  uint64_t entry_count = 0;
  uint64_t offset = 0;  // of the central directory
  uint64_t size = 0;
  uint64_t end = 0;  // where the directory must end: the zip64 end record, or the end record
};

// The end record is the last 22+ bytes; a comment of up to 64 KiB may follow it. Scanning backwards and requiring
// the comment to reach exactly the end of the file keeps a signature that happens to sit inside a comment (or
// inside data) from being mistaken for the real record.
Status find_end_record(const uint8_t* data, uint64_t size, const std::string& name, uint64_t* end_offset) {
  if (size < kEndSize) return errorf("%s: not a zip archive (%llu bytes is too short)", name.c_str(),
                                     static_cast<unsigned long long>(size));
  uint64_t last = size - kEndSize;
  uint64_t first = last > kMaxCommentLength ? last - kMaxCommentLength : 0;
  for (uint64_t pos = last + 1; pos-- > first;) {
    if (le32(data + pos) != kEndSignature) continue;
    uint64_t comment_length = le16(data + pos + 20);
    if (pos + kEndSize + comment_length == size) {
      *end_offset = pos;
      return Status();
    }
  }
  return errorf("%s: zip end-of-central-directory record not found (truncated or not a zip archive)", name.c_str());
}

Status read_directory_location(const uint8_t* data, uint64_t size, const std::string& name, Directory* dir) {
  uint64_t end_offset = 0;
  DDPM_TRY(find_end_record(data, size, name, &end_offset));
  const uint8_t* end = data + end_offset;
  uint64_t disk = le16(end + 4), directory_disk = le16(end + 6);
  uint64_t entries_on_disk = le16(end + 8), entries = le16(end + 10);
  uint64_t dir_size = le32(end + 12), dir_offset = le32(end + 16);
  bool saturated = entries == 0xFFFF || entries_on_disk == 0xFFFF || dir_size == 0xFFFFFFFF ||
                   dir_offset == 0xFFFFFFFF || disk == 0xFFFF || directory_disk == 0xFFFF;
  dir->end = end_offset;

  bool has_locator = end_offset >= kZip64LocatorSize && le32(end - kZip64LocatorSize) == kZip64LocatorSignature;
  if (has_locator) {
    const uint8_t* locator = end - kZip64LocatorSize;
    uint64_t record_offset = le64(locator + 8);
    uint32_t total_disks = le32(locator + 16);
    uint64_t locator_offset = end_offset - kZip64LocatorSize;
    if (total_disks > 1 || le32(locator + 4) != 0)
      return errorf("%s: multi-disk zip archives are not supported", name.c_str());
    if (!range_fits(record_offset, kZip64EndMinSize, locator_offset))
      return errorf("%s: zip64 end-of-central-directory record at offset %llu lies outside the file", name.c_str(),
                    static_cast<unsigned long long>(record_offset));
    const uint8_t* record = data + record_offset;
    if (le32(record) != kZip64EndSignature)
      return errorf("%s: bad zip64 end-of-central-directory signature at offset %llu", name.c_str(),
                    static_cast<unsigned long long>(record_offset));
    // The record's own size field excludes its first 12 bytes; it must stop at (or before) the locator.
    uint64_t record_size = le64(record + 4);
    if (record_size < kZip64EndMinSize - 12 || !range_fits(record_offset + 12, record_size, locator_offset))
      return errorf("%s: zip64 end-of-central-directory record has a bad size", name.c_str());
    disk = le32(record + 16);
    directory_disk = le32(record + 20);
    entries_on_disk = le64(record + 24);
    entries = le64(record + 32);
    dir_size = le64(record + 40);
    dir_offset = le64(record + 48);
    dir->end = record_offset;
  } else if (saturated) {
    return errorf("%s: zip end record needs zip64 values but the zip64 locator is missing", name.c_str());
  }
  if (disk != 0 || directory_disk != 0 || entries_on_disk != entries)
    return errorf("%s: multi-disk zip archives are not supported", name.c_str());
  if (entries > kZipMaxEntries)
    return errorf("%s: zip declares %llu entries (limit %llu)", name.c_str(), static_cast<unsigned long long>(entries),
                  static_cast<unsigned long long>(kZipMaxEntries));
  if (!range_fits(dir_offset, dir_size, dir->end))
    return errorf("%s: zip central directory (offset %llu, %llu bytes) lies outside the file", name.c_str(),
                  static_cast<unsigned long long>(dir_offset), static_cast<unsigned long long>(dir_size));
  dir->entry_count = entries;
  dir->offset = dir_offset;
  dir->size = dir_size;
  return Status();
}

// Replaces saturated 32-bit fields with their zip64 extra-field values, in the order the format fixes.
Status apply_zip64_extra(const uint8_t* extra, uint64_t extra_length, const std::string& name,
                         const std::string& entry_name, uint64_t* uncompressed, uint64_t* compressed,
                         uint64_t* local_offset) {
  uint64_t pos = 0;
  while (extra_length - pos >= 4) {
    uint16_t id = le16(extra + pos), length = le16(extra + pos + 2);
    pos += 4;
    if (length > extra_length - pos)
      return errorf("%s: zip entry '%s' has a malformed extra field", name.c_str(), entry_name.c_str());
    if (id == kZip64ExtraId) {
      uint64_t field = pos, field_end = pos + length;
      uint64_t* targets[3] = {uncompressed, compressed, local_offset};
      for (uint64_t* target : targets) {
        if (*target != 0xFFFFFFFF) continue;
        if (field_end - field < 8)
          return errorf("%s: zip entry '%s' has a truncated zip64 extra field", name.c_str(), entry_name.c_str());
        *target = le64(extra + field);
        field += 8;
      }
    }
    pos += length;
  }
  if (*uncompressed == 0xFFFFFFFF || *compressed == 0xFFFFFFFF || *local_offset == 0xFFFFFFFF)
    return errorf("%s: zip entry '%s' needs a zip64 extra field but has none", name.c_str(), entry_name.c_str());
  return Status();
}

struct Span {
  uint64_t begin, end;  // local header start, data end
  size_t entry;
};

}  // namespace

Status read_zip_directory(const uint8_t* data, uint64_t size, const std::string& name,
                          std::vector<ZipEntry>* entries) {
  entries->clear();
  Directory dir;
  DDPM_TRY(read_directory_location(data, size, name, &dir));
  // Every central header takes at least 46 bytes, which bounds the allocation by the directory size.
  if (dir.entry_count > dir.size / kCentralHeaderSize)
    return errorf("%s: zip declares %llu entries but its central directory holds at most %llu", name.c_str(),
                  static_cast<unsigned long long>(dir.entry_count),
                  static_cast<unsigned long long>(dir.size / kCentralHeaderSize));

  std::vector<ZipEntry> result;
  std::vector<Span> spans;
  result.reserve(dir.entry_count);
  spans.reserve(dir.entry_count);
  std::unordered_set<std::string> seen_names;
  const uint64_t dir_end = dir.offset + dir.size;
  uint64_t pos = dir.offset;
  for (uint64_t index = 0; index < dir.entry_count; ++index) {
    if (!range_fits(pos, kCentralHeaderSize, dir_end) || le32(data + pos) != kCentralHeaderSignature)
      return errorf("%s: zip central directory entry %llu is malformed or truncated", name.c_str(),
                    static_cast<unsigned long long>(index));
    const uint8_t* header = data + pos;
    uint16_t flags = le16(header + 8), method = le16(header + 10);
    uint64_t compressed = le32(header + 20), uncompressed = le32(header + 24);
    uint64_t name_length = le16(header + 28), extra_length = le16(header + 30), comment_length = le16(header + 32);
    uint64_t start_disk = le16(header + 34), local_offset = le32(header + 42);
    uint64_t variable = name_length + extra_length + comment_length;
    if (!range_fits(pos + kCentralHeaderSize, variable, dir_end))
      return errorf("%s: zip central directory entry %llu overruns the directory", name.c_str(),
                    static_cast<unsigned long long>(index));
    if (name_length == 0 || name_length > kZipMaxNameLength)
      return errorf("%s: zip central directory entry %llu has a name of %llu bytes", name.c_str(),
                    static_cast<unsigned long long>(index), static_cast<unsigned long long>(name_length));
    std::string entry_name(reinterpret_cast<const char*>(header + kCentralHeaderSize), name_length);
    const uint8_t* extra = header + kCentralHeaderSize + name_length;
    DDPM_TRY(apply_zip64_extra(extra, extra_length, name, entry_name, &uncompressed, &compressed, &local_offset));
    pos += kCentralHeaderSize + variable;

    if (flags & (kFlagEncrypted | kFlagStrongEncryption))
      return errorf("%s: zip entry '%s' is encrypted (not supported)", name.c_str(), entry_name.c_str());
    if (method != 0)
      return errorf("%s: zip entry '%s' is compressed (method %u); only stored entries are supported, as torch.save "
                    "writes them", name.c_str(), entry_name.c_str(), static_cast<unsigned>(method));
    if (compressed != uncompressed)
      return errorf("%s: zip entry '%s' is stored but its compressed and uncompressed sizes differ", name.c_str(),
                    entry_name.c_str());
    if (start_disk != 0 && start_disk != 0xFFFF)
      return errorf("%s: multi-disk zip archives are not supported", name.c_str());
    if (!seen_names.insert(entry_name).second)
      return errorf("%s: zip has two entries named '%s'", name.c_str(), entry_name.c_str());

    // Local header: its extra field may differ from the central one (torch pads there), so the data offset
    // depends on the local lengths; its sizes may be zero (data descriptor follows), so the central sizes rule.
    if (!range_fits(local_offset, kLocalHeaderSize, dir.offset) || le32(data + local_offset) != kLocalHeaderSignature)
      return errorf("%s: zip entry '%s' has no valid local header at offset %llu", name.c_str(), entry_name.c_str(),
                    static_cast<unsigned long long>(local_offset));
    const uint8_t* local = data + local_offset;
    uint16_t local_method = le16(local + 8);
    uint64_t local_compressed = le32(local + 18), local_uncompressed = le32(local + 22);
    uint64_t local_name_length = le16(local + 26), local_extra_length = le16(local + 28);
    if (local_method != method)
      return errorf("%s: zip entry '%s': local header disagrees with the central directory on the method",
                    name.c_str(), entry_name.c_str());
    for (uint64_t local_size : {local_compressed, local_uncompressed}) {
      if (local_size != 0 && local_size != 0xFFFFFFFF && local_size != uncompressed)
        return errorf("%s: zip entry '%s': local header disagrees with the central directory on the size",
                      name.c_str(), entry_name.c_str());
    }
    uint64_t data_offset = local_offset + kLocalHeaderSize + local_name_length + local_extra_length;
    if (!range_fits(local_offset + kLocalHeaderSize, local_name_length + local_extra_length, dir.offset) ||
        !range_fits(data_offset, uncompressed, dir.offset))
      return errorf("%s: zip entry '%s' (%llu bytes at offset %llu) overruns the file or its central directory",
                    name.c_str(), entry_name.c_str(), static_cast<unsigned long long>(uncompressed),
                    static_cast<unsigned long long>(data_offset));
    if (local_name_length != name_length ||
        std::char_traits<char>::compare(reinterpret_cast<const char*>(local + kLocalHeaderSize), entry_name.data(),
                                        name_length) != 0)
      return errorf("%s: zip entry '%s': local header names a different file", name.c_str(), entry_name.c_str());

    spans.push_back(Span{local_offset, data_offset + uncompressed, result.size()});
    result.push_back(ZipEntry{std::move(entry_name), data_offset, uncompressed});
  }
  if (pos != dir_end)
    return errorf("%s: zip central directory has %llu unexplained trailing bytes", name.c_str(),
                  static_cast<unsigned long long>(dir_end - pos));

  // Overlapping records would let one region be read as two different entries (or a header as data).
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].begin < spans[i - 1].end)
      return errorf("%s: zip entries '%s' and '%s' overlap", name.c_str(), result[spans[i - 1].entry].name.c_str(),
                    result[spans[i].entry].name.c_str());
  }
  *entries = std::move(result);
  return Status();
}

const ZipEntry* find_zip_entry(const std::vector<ZipEntry>& entries, const std::string& entry_name) {
  for (const ZipEntry& entry : entries) {
    if (entry.name == entry_name) return &entry;
  }
  return nullptr;
}

}  // namespace ddpm
