// Reading little-endian header fields out of kernel images (bzImage setup header, ELF).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <type_traits>

namespace passvm::boot {

// The T at byte `offset` of `bytes` (x86 is little-endian, like the formats read here).
// Throws std::runtime_error("truncated") when it does not fit: image parsers turn that into
// a message naming the file.
template <typename T>
  requires std::is_trivially_copyable_v<T>
T load(std::span<const uint8_t> bytes, size_t offset) {
  T v{};
  if (offset > bytes.size() || sizeof v > bytes.size() - offset) throw std::runtime_error("truncated");
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

}  // namespace passvm::boot
