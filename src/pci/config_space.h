// pci: ConfigSpace, the byte-array model behind emulated PCI functions.
//
// Emulated functions (the host bridge, future virtual devices) keep their
// config space as 4 KiB of bytes plus two masks: which bits the guest may
// write and which are write-one-to-clear (status bits). Keeping the masks next
// to the bytes makes "read-only but for the usual RW bits" a table, not code.
#pragma once

#include <array>
#include <cstdint>

#include "pci/pci_device.h"

namespace passvm::pci {

// Standard header offsets used by the root and emulated functions.
inline constexpr uint32_t kCfgVendorId = 0x00;
inline constexpr uint32_t kCfgDeviceId = 0x02;
inline constexpr uint32_t kCfgCommand = 0x04;
inline constexpr uint32_t kCfgStatus = 0x06;
inline constexpr uint32_t kCfgRevision = 0x08;
inline constexpr uint32_t kCfgClassCode = 0x09;  // prog-if, subclass, class
inline constexpr uint32_t kCfgCacheLine = 0x0c;
inline constexpr uint32_t kCfgLatency = 0x0d;
inline constexpr uint32_t kCfgHeaderType = 0x0e;
inline constexpr uint32_t kCfgBar0 = 0x10;
inline constexpr uint32_t kCfgSubsysVendor = 0x2c;
inline constexpr uint32_t kCfgSubsysId = 0x2e;
inline constexpr uint32_t kCfgCapPtr = 0x34;
inline constexpr uint32_t kCfgIntLine = 0x3c;
inline constexpr uint32_t kCfgIntPin = 0x3d;
inline constexpr uint32_t kConfigSpaceSize = 4096;

inline constexpr uint16_t kStatusCapList = 1u << 4;

class ConfigSpace {
 public:
  ConfigSpace() {
    bytes_.fill(0);
    writable_.fill(0);
    w1c_.fill(0);
  }

  // Guest-visible accessors: offset + size must lie inside the 4 KiB (callers check).
  uint32_t read(uint32_t offset, int size) const { return load_le(&bytes_[offset], size); }
  void write(uint32_t offset, int size, uint32_t value) {
    for (int i = 0; i < size; i++) {
      uint32_t at = offset + static_cast<uint32_t>(i);
      auto v = static_cast<uint8_t>(value >> (8 * i));
      bytes_[at] = static_cast<uint8_t>((bytes_[at] & ~writable_[at]) | (v & writable_[at]));
      bytes_[at] = static_cast<uint8_t>(bytes_[at] & ~(v & w1c_[at]));
    }
  }

  // Device-side setup: values and masks, ignoring the guest masks.
  void set(uint32_t offset, int size, uint32_t value) { store_le(&bytes_[offset], size, value); }
  void set_writable(uint32_t offset, int size, uint32_t mask) { store_le(&writable_[offset], size, mask); }
  void set_w1c(uint32_t offset, int size, uint32_t mask) { store_le(&w1c_[offset], size, mask); }

 private:
  std::array<uint8_t, kConfigSpaceSize> bytes_;
  std::array<uint8_t, kConfigSpaceSize> writable_;
  std::array<uint8_t, kConfigSpaceSize> w1c_;
};

}  // namespace passvm::pci
