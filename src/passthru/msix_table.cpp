#include "passthru/msix_table.h"

namespace passvm::passthru {

uint32_t MsixTable::read(uint64_t offset, int len) const {
  if (len != 4 || offset % 4 || offset >= table_bytes()) return 0;
  const Entry& e = entries_[offset / kEntrySize];
  switch (offset % kEntrySize) {
    case 0: return e.addr_lo;
    case 4: return e.addr_hi;
    case 8: return e.data;
    default: return e.ctrl;
  }
}

std::optional<uint32_t> MsixTable::write(uint64_t offset, int len, uint32_t value) {
  if (len != 4 || offset % 4 || offset >= table_bytes()) return std::nullopt;
  uint32_t i = static_cast<uint32_t>(offset / kEntrySize);
  Entry& e = entries_[i];
  Entry before = e;
  switch (offset % kEntrySize) {
    case 0: e.addr_lo = value & ~3u; break;  // dword-aligned message address
    case 4: e.addr_hi = value; break;
    case 8: e.data = value; break;
    default: e.ctrl = value & 1; break;  // only the mask bit is defined
  }
  if (before.addr_lo == e.addr_lo && before.addr_hi == e.addr_hi && before.data == e.data && before.ctrl == e.ctrl)
    return std::nullopt;
  return i;
}

}  // namespace passvm::passthru
