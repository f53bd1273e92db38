#include "bus/bus.h"

#include <fmt/format.h>

#include <algorithm>
#include <mutex>
#include <stdexcept>

namespace passvm {

void Bus::add(uint64_t base, uint64_t size, BusDevice* dev) {
  if (size == 0 || base + size < base)
    throw std::invalid_argument(fmt::format("{} bus: bad range {:#x}+{:#x}", name_, base, size));
  std::unique_lock guard(lock_);
  auto next = ranges_.lower_bound(base);
  if (next != ranges_.end() && next->first < base + size)
    throw std::invalid_argument(fmt::format("{} bus: range {:#x}-{:#x} overlaps {:#x}-{:#x}", name_, base,
                                            base + size - 1, next->first, next->first + next->second.size - 1));
  if (next != ranges_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.size > base)
      throw std::invalid_argument(fmt::format("{} bus: range {:#x}-{:#x} overlaps {:#x}-{:#x}", name_, base,
                                              base + size - 1, prev->first, prev->first + prev->second.size - 1));
  }
  ranges_.emplace(base, Range{size, dev});
}

bool Bus::overlaps(uint64_t base, uint64_t size) {
  // A query reaching past the top of the address space must not wrap to a small end and miss the ranges
  // above base; no range holds the last address (add refuses ranges ending at 2^64), so clamping is exact.
  const uint64_t end = base + size < base ? UINT64_MAX : base + size;
  std::shared_lock guard(lock_);
  auto next = ranges_.lower_bound(base);
  if (next != ranges_.end() && next->first < end) return true;
  return next != ranges_.begin() && std::prev(next)->first + std::prev(next)->second.size > base;
}

bool Bus::remove(uint64_t base) {
  std::unique_lock guard(lock_);
  return ranges_.erase(base) != 0;
}

BusDevice* Bus::find(uint64_t addr, uint64_t len, uint64_t* offset) {
  std::shared_lock guard(lock_);
  auto it = ranges_.upper_bound(addr);
  if (it == ranges_.begin()) return nullptr;
  --it;
  uint64_t off = addr - it->first;
  if (off >= it->second.size || len > it->second.size - off) return nullptr;
  *offset = off;
  return it->second.dev;
}

bool Bus::read(uint64_t addr, std::span<uint8_t> data) {
  uint64_t off = 0;
  BusDevice* dev = find(addr, data.size(), &off);
  if (!dev) {
    std::fill(data.begin(), data.end(), uint8_t{0xff});
    return false;
  }
  dev->read(off, data);
  return true;
}

bool Bus::write(uint64_t addr, std::span<const uint8_t> data) {
  uint64_t off = 0;
  BusDevice* dev = find(addr, data.size(), &off);
  if (!dev) return false;
  dev->write(off, data);
  return true;
}

}  // namespace passvm
