// pci: AddressWindow, a bump allocator for one BAR window of layout.h.
//
// Firmware hands out BAR addresses once, before boot, from fixed windows.
// Requests are served largest first, so with power-of-two sizes natural
// alignment never leaves holes and a simple cursor is enough.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace passvm::pci {

class AddressWindow {
 public:
  AddressWindow(std::string name, uint64_t base, uint64_t size) : name_(std::move(name)), base_(base), size_(size), next_(base) {}

  // A naturally aligned block of `size` (a power of two), or nullopt when it does not fit.
  std::optional<uint64_t> allocate(uint64_t size) {
    if (size == 0 || (size & (size - 1)) != 0) return std::nullopt;
    uint64_t at = (next_ + size - 1) & ~(size - 1);
    if (at < next_ || at - base_ > size_ || size > size_ - (at - base_)) return std::nullopt;
    next_ = at + size;
    return at;
  }

  const std::string& name() const { return name_; }
  uint64_t base() const { return base_; }
  uint64_t size() const { return size_; }
  uint64_t free() const { return size_ - (next_ - base_); }

 private:
  std::string name_;
  uint64_t base_, size_, next_;
};

}  // namespace passvm::pci
