// Fuzz target: address-range dispatch of trapped port I/O and MMIO (src/bus). Ranges are added and
// removed and accesses dispatched at any address and length, zero-length, overlapping and wrapping ones
// included; every answer of the Bus is checked against a plain model of what it should be (ranges as
// 128-bit intervals, which cannot wrap).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <map>
#include <stdexcept>
#include <vector>

#include "bus/bus.h"
#include "fuzz/ops.h"

namespace {

using passvm::fuzz::Op;
using u128 = unsigned __int128;

[[noreturn]] void fail(const char* what, uint64_t a, uint64_t b) {
  std::fprintf(stderr, "%s (%#llx, %#llx)\n", what, static_cast<unsigned long long>(a),
               static_cast<unsigned long long>(b));
  std::abort();
}

// Answers reads with bytes that say which device saw which offset, and remembers the last access.
struct Recorder final : passvm::BusDevice {
  int id = 0;
  uint64_t last_offset = 0;
  size_t last_len = 0;
  int accesses = 0;
  static uint8_t byte(int id, uint64_t offset) { return static_cast<uint8_t>(id * 31 + offset * 7); }
  void read(uint64_t offset, std::span<uint8_t> data) override {
    note(offset, data.size());
    for (size_t i = 0; i < data.size(); i++) data[i] = byte(id, offset + i);
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override { note(offset, data.size()); }
  void note(uint64_t offset, size_t len) {
    last_offset = offset;
    last_len = len;
    accesses++;
  }
};

struct Range {
  uint64_t size;
  int dev;
};

class Model {
 public:
  std::map<uint64_t, Range> ranges;  // by base
  bool overlaps(u128 base, u128 size) const {
    for (auto& [b, r] : ranges)
      if (b < base + size && base < u128{b} + r.size) return true;
    return false;
  }
  // The range wholly holding [addr, addr+len), if any.
  const std::pair<const uint64_t, Range>* holder(uint64_t addr, size_t len) const {
    for (auto& e : ranges)
      if (addr >= e.first && addr - e.first < e.second.size && u128{addr} + len <= u128{e.first} + e.second.size)
        return &e;
    return nullptr;
  }
};

// An address: anywhere, low, near the top of the address space, or at an edge of a range already there.
uint64_t pick_address(const Op& op, const Model& m) {
  const auto delta = static_cast<int8_t>(op.wide >> 56);
  switch (op.size % 4) {
    case 0: return op.wide;
    case 1: return op.wide & 0xffff;
    case 2: {
      if (m.ranges.empty()) return op.wide;
      auto it = std::next(m.ranges.begin(), static_cast<long>(op.offset % m.ranges.size()));
      uint64_t edge = op.offset & 0x8000 ? it->first + it->second.size : it->first;
      return edge + static_cast<uint64_t>(static_cast<int64_t>(delta));
    }
    default: return ~uint64_t{0} - (op.wide & 0xffff);
  }
}

// A size: small, a dword's worth, up to the end of the address space (give or take), or huge.
uint64_t pick_size(const Op& op, uint64_t base) {
  switch ((op.size >> 2) % 4) {
    case 0: return op.value & 0xff;
    case 1: return op.value;
    case 2: return (~base + 1) + static_cast<uint64_t>(static_cast<int64_t>(static_cast<int8_t>(op.value)));
    default: return uint64_t{op.value} << 32 | op.value;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  passvm::Bus bus("fuzz");
  Model model;
  std::vector<Recorder> devices(8);
  for (size_t i = 0; i < devices.size(); i++) devices[i].id = static_cast<int>(i) + 1;
  passvm::fuzz::OpReader ops(std::span(data, size));
  while (auto op = ops.next()) {
    const uint64_t addr = pick_address(*op, model);
    switch (op->kind % 5) {
      case 0: {  // add
        const uint64_t len = pick_size(*op, addr);
        const int dev = (op->size >> 4) % 8;
        const bool valid = len != 0 && u128{addr} + len < (u128{1} << 64) && !model.overlaps(addr, len);
        bool added = true;
        try {
          bus.add(addr, len, &devices[static_cast<size_t>(dev)]);
        } catch (const std::invalid_argument&) {
          added = false;
        }
        if (added != valid) fail(added ? "add accepted a bad or overlapping range" : "add refused a free range", addr, len);
        if (added) model.ranges[addr] = {len, dev};
        break;
      }
      case 1: {  // remove
        if (bus.remove(addr) != (model.ranges.erase(addr) == 1)) fail("remove disagrees", addr, 0);
        break;
      }
      case 2: {  // overlaps
        const uint64_t len = pick_size(*op, addr);
        // An empty range overlaps nothing in the model; the Bus is never asked about one.
        if (len != 0 && bus.overlaps(addr, len) != model.overlaps(addr, len)) fail("overlaps disagrees", addr, len);
        break;
      }
      default: {  // a read or a write of 0 to 15 bytes
        const bool write = op->kind % 5 == 4;
        const size_t len = op->value % 16;
        uint8_t buf[16] = {};
        for (auto& d : devices) d.accesses = 0;
        const bool claimed = write ? bus.write(addr, std::span<const uint8_t>(buf, len)) : bus.read(addr, std::span(buf, len));
        const auto* holder = model.holder(addr, len);
        if (claimed != (holder != nullptr)) fail(claimed ? "an access nobody holds was claimed" : "an access was dropped", addr, len);
        int total = 0;
        for (auto& d : devices) total += d.accesses;
        if (total != (claimed ? 1 : 0)) fail("the access reached the wrong number of devices", addr, len);
        if (!claimed) {
          if (!write)
            for (size_t i = 0; i < len; i++)
              if (buf[i] != 0xff) fail("an unclaimed read is not all ones", addr, len);
          break;
        }
        const Recorder& d = devices[static_cast<size_t>(holder->second.dev)];
        if (d.accesses != 1 || d.last_offset != addr - holder->first || d.last_len != len)
          fail("the access reached the wrong device or offset", addr, len);
        if (!write)
          for (size_t i = 0; i < len; i++)
            if (buf[i] != Recorder::byte(d.id, addr - holder->first + i)) fail("read data mixed up", addr, len);
        break;
      }
    }
  }
  return 0;
}
