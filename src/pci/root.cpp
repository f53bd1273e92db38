#include "pci/root.h"

#include <fmt/format.h>

#include <stdexcept>

#include "pci/config_space.h"

namespace passvm::pci {

namespace {

constexpr uint32_t kConfigEnable = 0x80000000u;
constexpr uint32_t kConfigAddressMask = 0x80fffffcu;  // enable, bus, device, function, dword register
constexpr uint8_t kResetCpu = 0x04;                     // 0xCF9 bit 2: perform the reset selected by bit 1
constexpr uint8_t kResetControlMask = 0x0e;
constexpr uint32_t kHeaderType = 0x0e;

uint64_t all_ones(size_t size) { return size >= 8 ? ~uint64_t{0} : (uint64_t{1} << (8 * size)) - 1; }

// Largest piece a PciDevice accepts at this offset: 4, 2 or 1 bytes, aligned, within what is left.
int chunk_size(uint32_t offset, size_t left) {
  for (int c : {4, 2}) {
    if (offset % static_cast<uint32_t>(c) == 0 && left >= static_cast<size_t>(c)) return c;
  }
  return 1;
}

uint64_t load(std::span<const uint8_t> data) {
  uint64_t v = 0;
  for (size_t i = 0; i < data.size() && i < 8; i++) v |= uint64_t{data[i]} << (8 * i);
  return v;
}

void store(std::span<uint8_t> data, uint64_t v) {
  for (size_t i = 0; i < data.size(); i++) data[i] = static_cast<uint8_t>(i < 8 ? v >> (8 * i) : 0xff);
}

}  // namespace

PciRoot::PciRoot(std::function<void()> on_reset) : on_reset_(std::move(on_reset)) {}

void PciRoot::add(int slot, int func, PciDevice* dev) {
  if (slot < 0 || slot >= kSlots || func < 0 || func >= kFunctions)
    throw std::invalid_argument(fmt::format(
        "PCI slot {}.{} is out of range: bus 0 has slots 0-{} with functions 0-{}", slot, func, kSlots - 1,
        kFunctions - 1));
  if (dev == nullptr) throw std::invalid_argument(fmt::format("PCI slot {}.{}: no device given", slot, func));
  std::lock_guard g(slots_lock_);
  PciDevice*& at = devices_[static_cast<size_t>(slot * kFunctions + func)];
  if (at != nullptr)
    throw std::invalid_argument(fmt::format("PCI slot {}.{} is already taken by {}; pick a free slot for {}", slot,
                                            func, at->name(), dev->name()));
  at = dev;
}

void PciRoot::remove(int slot, int func) {
  if (slot < 0 || slot >= kSlots || func < 0 || func >= kFunctions) return;
  std::lock_guard g(slots_lock_);
  devices_[static_cast<size_t>(slot * kFunctions + func)] = nullptr;
}

PciDevice* PciRoot::device(int slot, int func) const {
  if (slot < 0 || slot >= kSlots || func < 0 || func >= kFunctions) return nullptr;
  std::lock_guard g(slots_lock_);
  return devices_[static_cast<size_t>(slot * kFunctions + func)];
}

PciDevice* PciRoot::target(uint32_t bus, uint32_t slot, uint32_t func, uint32_t offset, int size) const {
  if (bus != 0 || size < 1 || size > 8) return nullptr;
  if (offset >= kConfigSpaceSize || static_cast<uint32_t>(size) > kConfigSpaceSize - offset) return nullptr;
  return device(static_cast<int>(slot), static_cast<int>(func));
}

// Splits an access into the aligned 4-, 2- and 1-byte pieces a PciDevice takes; fn(offset, size, shift).
template <typename Fn>
static void for_each_piece(uint32_t offset, int size, Fn fn) {
  auto len = static_cast<size_t>(size);
  for (size_t done = 0; done < len;) {
    auto at = offset + static_cast<uint32_t>(done);
    int c = chunk_size(at, len - done);
    fn(at, c, static_cast<unsigned>(8 * done));
    done += static_cast<size_t>(c);
  }
}

bool PciRoot::multi_function(uint32_t slot) const {
  std::lock_guard g(slots_lock_);
  for (int f = 1; f < kFunctions; f++)
    if (devices_[static_cast<size_t>(slot * kFunctions + static_cast<uint32_t>(f))]) return true;
  return false;
}

uint64_t PciRoot::config_read(uint32_t bus, uint32_t slot, uint32_t func, uint32_t offset, int size) {
  PciDevice* dev = target(bus, slot, func, offset, size);
  if (dev == nullptr) return size >= 1 ? all_ones(static_cast<size_t>(size)) : ~uint64_t{0};
  uint64_t value = 0;
  for_each_piece(offset, size, [&](uint32_t at, int c, unsigned shift) {
    value |= (dev->config_read(at, c) & all_ones(static_cast<size_t>(c))) << shift;
  });
  // The header type's multi-function bit belongs to the slot, not to one device: a guest scans
  // functions 1-7 only when function 0 says there are more, whatever the devices were on the host.
  if (offset <= kHeaderType && kHeaderType < offset + static_cast<uint32_t>(size)) {
    const unsigned shift = 8 * (kHeaderType - offset) + 7;
    value = (value & ~(uint64_t{1} << shift)) | (uint64_t{multi_function(slot)} << shift);
  }
  return value;
}

void PciRoot::config_write(uint32_t bus, uint32_t slot, uint32_t func, uint32_t offset, int size,
                           uint64_t value) {
  PciDevice* dev = target(bus, slot, func, offset, size);
  if (dev == nullptr) return;
  for_each_piece(offset, size, [&](uint32_t at, int c, unsigned shift) {
    dev->config_write(at, c, static_cast<uint32_t>((value >> shift) & all_ones(static_cast<size_t>(c))));
  });
}

// Mechanism #1: offset 0-3 is the address dword (0xCF9 being the reset register), 4-7 the data window.
void PciRoot::ConfigIo::read(uint64_t offset, std::span<uint8_t> data) {
  uint32_t address = 0;
  {
    std::lock_guard g(lock_);
    if (offset < 4) {
      if (offset == 0 && data.size() == 4)
        store(data, address_);
      else if (offset == 1 && data.size() == 1)
        store(data, reset_control_);
      else
        store(data, all_ones(data.size()));
      return;
    }
    address = address_;
  }
  uint64_t in_dword = offset - 4;
  if (!(address & kConfigEnable) || in_dword + data.size() > 4) {
    store(data, all_ones(data.size()));
    return;
  }
  uint32_t reg = (address & 0xfc) + static_cast<uint32_t>(in_dword);
  store(data, root_.config_read((address >> 16) & 0xff, (address >> 11) & 0x1f, (address >> 8) & 0x7, reg,
                                static_cast<int>(data.size())));
}

void PciRoot::ConfigIo::write(uint64_t offset, std::span<const uint8_t> data) {
  uint32_t address = 0;
  {
    std::unique_lock g(lock_);
    if (offset < 4) {
      if (offset == 0 && data.size() == 4) {
        address_ = static_cast<uint32_t>(load(data)) & kConfigAddressMask;
      } else if (offset == 1 && data.size() == 1) {
        reset_control_ = data[0] & kResetControlMask;
        g.unlock();
        if ((data[0] & kResetCpu) && root_.on_reset_) root_.on_reset_();
      }
      return;
    }
    address = address_;
  }
  uint64_t in_dword = offset - 4;
  if (!(address & kConfigEnable) || in_dword + data.size() > 4) return;
  uint32_t reg = (address & 0xfc) + static_cast<uint32_t>(in_dword);
  root_.config_write((address >> 16) & 0xff, (address >> 11) & 0x1f, (address >> 8) & 0x7, reg,
                     static_cast<int>(data.size()), load(data));
}

// ECAM: bus in bits 27:20, device 19:15, function 14:12, register 11:0.
// Sizes above 8 read as all ones and drop writes: config_read/config_write refuse them.
void PciRoot::Ecam::read(uint64_t offset, std::span<uint8_t> data) {
  store(data, root_.config_read(static_cast<uint32_t>(offset >> 20), (offset >> 15) & 0x1f, (offset >> 12) & 0x7,
                                static_cast<uint32_t>(offset & 0xfff), static_cast<int>(data.size())));
}

void PciRoot::Ecam::write(uint64_t offset, std::span<const uint8_t> data) {
  root_.config_write(static_cast<uint32_t>(offset >> 20), (offset >> 15) & 0x1f, (offset >> 12) & 0x7,
                     static_cast<uint32_t>(offset & 0xfff), static_cast<int>(data.size()), load(data));
}

}  // namespace passvm::pci
