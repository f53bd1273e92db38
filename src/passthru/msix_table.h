// passthru: the guest's MSI-X table and pending-bit array.
//
// The guest programs vectors here; the host's real table belongs to the host
// kernel (VFIO programs it with host vectors), so the guest's copy is kept by
// passvm and each change re-routes one KVM MSI route. Entries start masked, as
// after reset. Accesses must be 4 bytes, dword aligned (8-byte ones are split by
// the caller); anything else reads 0 and is dropped, as the spec leaves it undefined.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace passvm::passthru {

class MsixTable {
 public:
  struct Entry {
    uint32_t addr_lo = 0, addr_hi = 0, data = 0, ctrl = 1;  // ctrl bit 0: masked
    uint64_t address() const { return static_cast<uint64_t>(addr_hi) << 32 | addr_lo; }
    bool masked() const { return ctrl & 1; }
  };
  static constexpr uint32_t kEntrySize = 16;

  explicit MsixTable(uint32_t entries) : entries_(entries) {}
  uint32_t size() const { return static_cast<uint32_t>(entries_.size()); }
  // The sizes the spec gives a table and PBA of `entries` vectors (one pending bit each, in qwords).
  static uint64_t table_bytes(uint32_t entries) { return uint64_t{entries} * kEntrySize; }
  static uint64_t pba_bytes(uint32_t entries) { return (uint64_t{entries} + 63) / 64 * 8; }
  uint64_t table_bytes() const { return table_bytes(size()); }
  uint64_t pba_bytes() const { return pba_bytes(size()); }

  const Entry& entry(uint32_t i) const { return entries_.at(i); }
  uint32_t read(uint64_t offset, int len) const;
  // Returns the entry that changed, if any.
  std::optional<uint32_t> write(uint64_t offset, int len, uint32_t value);

  void reset() { entries_.assign(entries_.size(), Entry{}); }

 private:
  std::vector<Entry> entries_;
};

}  // namespace passvm::passthru
