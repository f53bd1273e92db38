// passthru: the expansion ROM the guest sees (the ROM register at config offset 0x30).
//
// A ROM is read-only memory the guest maps by writing an address and the enable bit to
// the ROM register: Linux reads it for sysfs `rom` (GPU drivers read their VBIOS this
// way), firmware runs option ROMs from it. Its bytes come from the device (the
// transport's ROM region) or from a file the user gave instead (bhyve's rom=), for
// devices whose ROM is missing, broken or must be replaced. The image is kept in passvm's
// memory (a device's is read once, when the guest first enables its ROM: reading a ROM
// BAR is slow, a 256 KiB one took a minute through per-access traps in the lab) and
// mapped into the guest read-only, so reading it costs no exits; writes exit and are
// dropped. A KVM without read-only memory gets the same bytes through a trap.
//
// Lifetime: owned by PassthruDevice, which calls the register and mapping functions
// under its lock; read() runs on vCPU threads and only while the image is mapped, which
// is after it was loaded. The image is mapped exactly while the ROM is enabled, memory
// decoding is on and its address is acceptable; unmap() before destruction.
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

  // Maps the image where the register says when `visible`, unmaps it otherwise. Returns false when it
  // could not be mapped (it overlaps another device's registers); the ROM then stays unmapped. Throws,
  // with the ROM still where it was, when the platform will not remove its memory.
  bool map(Platform& platform, bool visible);
  void unmap(Platform& platform) { (void)map(platform, false); }

  // The trap, used only where read-only memory is not available; writes to the ROM land here too.
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t, std::span<const uint8_t>) override {}  // read-only memory

  ~RomBar() override;
  RomBar(const RomBar&) = delete;
  RomBar& operator=(const RomBar&) = delete;

 private:
  static constexpr uint32_t kAddressMask = 0xfffff800;
  RomBar(vfio::Device* dev, uint64_t content_size);
  void load();  // the device's ROM into image_, once

  vfio::Device* dev_;       // the device whose ROM region is read, or nullptr (a file, already loaded)
  uint64_t content_size_;   // bytes that exist; beyond them the image reads 0xff
  uint64_t size_;
  uint8_t* image_ = nullptr;  // size_ bytes, page aligned
  bool loaded_ = false;
  uint32_t reg_ = 0;
  std::optional<uint64_t> mapped_at_;
  std::optional<uint32_t> slot_;  // the read-only memory slot, or none (trapped)
};

}  // namespace passvm::passthru
