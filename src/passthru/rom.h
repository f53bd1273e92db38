// passthru: the expansion ROM the guest sees (the ROM register at config offset 0x30).
//
// A ROM is read-only memory the guest maps by writing an address and the enable bit to
// the ROM register: Linux reads it for sysfs `rom` (GPU drivers read their VBIOS this
// way), firmware runs option ROMs from it. Its bytes come from the device (the
// transport's ROM region) or from a file the user gave instead (bhyve's rom=), for
// devices whose ROM is missing, broken or must be replaced. Reads are trapped, since a
// ROM is read rarely and never on a data path; writes are dropped.
//
// Lifetime: owned by PassthruDevice, which calls the register and mapping functions
// under its lock; read() runs on vCPU threads and touches only what never changes
// after construction. The trap is on the MMIO bus exactly while the ROM is enabled,
// memory decoding is on and its address is acceptable; unmap() before destruction.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "bus/bus.h"
#include "passthru/platform.h"
#include "vfio/device.h"

namespace passvm::passthru {

class RomBar final : public BusDevice {
 public:
  // The device's own ROM; nullptr when it has none. The device must outlive the RomBar.
  static std::unique_ptr<RomBar> from_device(vfio::Device& dev);
  // A ROM image from a file; throws std::runtime_error naming the file and the problem.
  static std::unique_ptr<RomBar> from_file(const std::string& path);

  // The size the guest sizes the register to: a power of two, 2 KiB at least.
  uint64_t size() const { return size_; }
  uint64_t address() const { return reg_ & kAddressMask & ~(size_ - 1); }
  bool enabled() const { return reg_ & 1; }

  // The register as the guest reads it, and a write of the whole dword (address bits and enable).
  uint32_t register_value() const { return reg_; }
  void write_register(uint32_t value) { reg_ = value & ((kAddressMask & ~static_cast<uint32_t>(size_ - 1)) | 1); }

  // Puts the trap where the register says when `visible`, removes it otherwise. Returns false when the
  // bus refused the trap (it overlaps another device's); the ROM then stays unmapped.
  bool map(Platform& platform, bool visible);
  void unmap(Platform& platform) { (void)map(platform, false); }

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t, std::span<const uint8_t>) override {}  // read-only memory

 private:
  static constexpr uint32_t kAddressMask = 0xfffff800;
  RomBar(vfio::Device* dev, std::vector<uint8_t> image, uint64_t content_size);

  vfio::Device* dev_;           // the device's ROM region, or nullptr for a file
  std::vector<uint8_t> image_;  // the file's bytes
  uint64_t content_size_;       // bytes that exist; reads beyond them see 0xff
  uint64_t size_;
  uint32_t reg_ = 0;
  std::optional<uint64_t> trapped_at_;
};

}  // namespace passvm::passthru
