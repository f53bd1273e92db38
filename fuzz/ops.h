// fuzz: a fuzzer input read as a sequence of operations.
//
// The targets that model a guest poking at hardware (config space, MSI-X, bus dispatch) read their input
// as fixed 16-byte records rather than through FuzzedDataProvider: a record's fields sit at fixed places,
// so a mutation changes one operation and not the meaning of everything after it, and the seed corpus can
// be written by hand (make_seeds.cpp) from the same struct.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <vector>

namespace passvm::fuzz {

struct Op {
  uint8_t kind = 0;    // what to do; each target takes it modulo its number of operations
  uint8_t size = 0;    // access size code (see access_size) or a small count
  uint16_t offset = 0;
  uint32_t value = 0;
  uint64_t wide = 0;  // an address, a second value
};
static_assert(sizeof(Op) == 16);

class OpReader {
 public:
  explicit OpReader(std::span<const uint8_t> data) : data_(data) {}
  // The next whole record; a trailing partial record is ignored.
  std::optional<Op> next() {
    if (data_.size() - at_ < sizeof(Op)) return std::nullopt;
    Op op;
    std::memcpy(&op.kind, &data_[at_], 1);
    std::memcpy(&op.size, &data_[at_ + 1], 1);
    std::memcpy(&op.offset, &data_[at_ + 2], 2);
    std::memcpy(&op.value, &data_[at_ + 4], 4);
    std::memcpy(&op.wide, &data_[at_ + 8], 8);
    at_ += sizeof(Op);
    return op;
  }

 private:
  std::span<const uint8_t> data_;
  size_t at_ = 0;
};

// The inverse of OpReader, for seeds.
inline void append(std::vector<uint8_t>& out, const Op& op) {
  uint8_t b[sizeof(Op)];
  std::memcpy(b, &op.kind, 1);
  std::memcpy(b + 1, &op.size, 1);
  std::memcpy(b + 2, &op.offset, 2);
  std::memcpy(b + 4, &op.value, 4);
  std::memcpy(b + 8, &op.wide, 8);
  out.insert(out.end(), b, b + sizeof b);
}

// An access size: mostly the valid 1, 2 and 4, but also 0, 3, 8 and odd ones, which callers must refuse.
inline int access_size(uint8_t code) {
  static constexpr int kSizes[8] = {1, 2, 4, 4, 2, 1, 0, 3};
  return code < 0xf0 ? kSizes[code % 8] : code - 0xf8;  // 0xf0-0xff: -8 .. 7
}
// The size code that gives `size` back (1, 2 or 4).
inline uint8_t size_code(int size) { return size == 1 ? 0 : size == 2 ? 1 : 2; }

}  // namespace passvm::fuzz
