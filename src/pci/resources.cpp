// PciRoot::assign_resources: the firmware part of the root (see root.h).
#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "memory/layout.h"
#include "pci/address_window.h"
#include "pci/config_space.h"
#include "pci/root.h"

namespace passvm::pci {

namespace {

// 64-bit BARs smaller than this stay below 4 GiB, as firmware does, so that 32-bit-only OS paths still work.
constexpr uint64_t kSmall64BitBar = 64 * layout::MiB;
// MMIO BARs get at least a page of their own so a passthrough BAR can be mapped straight into the guest.
constexpr uint64_t kMinMmioBlock = 4096;
constexpr uint64_t kMinIoBlock = 4;

struct Pending {
  int slot, func;
  PciDevice* dev;
  BarRequest req;
  uint64_t block;  // size actually reserved
};

const char* kind_name(BarKind k) {
  switch (k) {
    case BarKind::Io: return "I/O";
    case BarKind::Mmio32: return "32-bit memory";
    case BarKind::Mmio64: return "64-bit memory";
  }
  return "?";
}

std::string where(const Pending& p) {
  return fmt::format("PCI 00:{:02x}.{} ({}) {}", p.slot, p.func, p.dev->name(),
                     p.req.index == kRomBarIndex ? std::string("ROM") : fmt::format("BAR{}", p.req.index));
}

void check_request(const Pending& p) {
  const BarRequest& r = p.req;
  if (r.index == kRomBarIndex && r.kind != BarKind::Mmio32)
    throw std::runtime_error(fmt::format("{}: an expansion ROM is 32-bit memory", where(p)));
  if (r.index < 0 || r.index > kRomBarIndex || (r.kind == BarKind::Mmio64 && r.index > 4))
    throw std::runtime_error(fmt::format("{}: BAR index out of range (0-5, a 64-bit BAR needs index 0-4, 6 is the "
                                         "expansion ROM)", where(p)));
  if (r.size == 0 || (r.size & (r.size - 1)) != 0)
    throw std::runtime_error(fmt::format("{}: size {:#x} is not a power of two", where(p), r.size));
  if (r.kind == BarKind::Io && r.size > 256)
    throw std::runtime_error(fmt::format("{}: an I/O BAR of {} is larger than the 256 bytes PCI allows", where(p),
                                         layout::size_text(r.size)));
  if (r.kind == BarKind::Mmio32 && r.size > 2 * layout::GiB)
    throw std::runtime_error(fmt::format("{}: a 32-bit BAR of {} cannot exist", where(p), layout::size_text(r.size)));
}

}  // namespace

void PciRoot::assign_resources(const layout::PciWindows& windows) {
  std::vector<Pending> pending;
  for (int slot = 0; slot < kSlots; slot++) {
    if (!device(slot, 0) && multi_function(static_cast<uint32_t>(slot)))
      for (int func = 1; func < kFunctions; func++)
        if (PciDevice* dev = device(slot, func))
          throw std::runtime_error(fmt::format("{} is at slot {} function {}, but the slot has no function 0, so the "
                                               "guest would never look for it: put a device at {}:0",
                                               dev->name(), slot, func, slot));
    for (int func = 0; func < kFunctions; func++) {
      PciDevice* dev = device(slot, func);
      if (!dev) continue;
      unsigned used = 0;  // BAR registers taken so far, one bit each
      for (const BarRequest& r : dev->bar_requests()) {
        Pending p{slot, func, dev, r, 0};
        check_request(p);
        unsigned regs = (r.kind == BarKind::Mmio64 ? 3u : 1u) << r.index;
        if (used & regs)
          throw std::runtime_error(fmt::format("{}: BAR register already used by another BAR of the device", where(p)));
        used |= regs;
        p.block = std::max(r.size, r.kind == BarKind::Io ? kMinIoBlock : kMinMmioBlock);
        pending.push_back(p);
      }
    }
  }
  // What can only go below 4 GiB first (32-bit BARs, ROMs, I/O), so that small 64-bit BARs, which may go
  // low too, never take the room those need; within each, largest first: with power-of-two blocks this
  // packs a window without holes.
  std::stable_sort(pending.begin(), pending.end(), [](const Pending& a, const Pending& b) {
    bool a_anywhere = a.req.kind == BarKind::Mmio64, b_anywhere = b.req.kind == BarKind::Mmio64;
    if (a_anywhere != b_anywhere) return b_anywhere;
    return a.block > b.block;
  });

  AddressWindow io("I/O", windows.io.start, windows.io.size);
  AddressWindow mmio32("32-bit MMIO", windows.mmio32.start, windows.mmio32.size);
  AddressWindow mmio64("64-bit MMIO", windows.mmio64.start, windows.mmio64.size);

  std::vector<BarAssignment> done;
  for (const Pending& p : pending) {
    std::vector<AddressWindow*> tries;
    switch (p.req.kind) {
      case BarKind::Io: tries = {&io}; break;
      case BarKind::Mmio32: tries = {&mmio32}; break;
      case BarKind::Mmio64:
        tries = p.req.size < kSmall64BitBar ? std::vector<AddressWindow*>{&mmio32, &mmio64}
                                            : std::vector<AddressWindow*>{&mmio64};
        break;
    }
    std::optional<uint64_t> at;
    for (AddressWindow* w : tries) {
      if ((at = w->allocate(p.block))) break;
    }
    if (!at) {
      AddressWindow* w = tries.back();
      throw std::runtime_error(fmt::format(
          "{}: no room for {} of {} space: the {} window ({:#x}-{:#x}, {}) has {} left. "
          "Pass through fewer devices, or resize the device's BAR on the host (e.g. Resizable BAR) so it fits",
          where(p), layout::size_text(p.block), kind_name(p.req.kind), w->name(), w->base(), w->base() + w->size() - 1,
          layout::size_text(w->size()), layout::size_text(w->free())));
    }
    done.push_back(BarAssignment{p.slot, p.func, p.req.index, p.req.kind, *at, p.req.size});
  }

  // Only program devices once everything fitted, so a failure leaves no half-configured bus.
  for (const BarAssignment& a : done) device(a.slot, a.func)->assign_bar(a.index, a.address);

  for (int slot = 0; slot < kSlots; slot++)
    for (int func = 0; func < kFunctions; func++) route_intx(slot, func);
  assignments_ = std::move(done);
}

void PciRoot::route_intx(int slot, int func) {
  PciDevice* dev = device(slot, func);
  if (!dev) return;
  uint32_t pin = dev->config_read(kCfgIntPin, 1) & 0xff;
  if (pin == 0) return;
  if (pin > 4)
    throw std::runtime_error(fmt::format("PCI 00:{:02x}.{} ({}): interrupt pin register holds {}, not 0-4 "
                                         "(none, INTA-INTD); the device's config space is bad",
                                         slot, func, dev->name(), pin));
  uint32_t gsi = layout::pci_intx_gsi(static_cast<uint32_t>(slot), pin - 1);
  dev->set_intx_gsi(gsi);
  // Firmware writes the routed IRQ to Interrupt Line; drivers print it and some older ones use it.
  dev->config_write(kCfgIntLine, 1, gsi);
}

}  // namespace passvm::pci
