#include "passthru/bar_mapper.h"

#include <algorithm>
#include <bit>
#include <chrono>

#include <fmt/format.h>

#include "base/eprint.h"

namespace passvm::passthru {
namespace {

constexpr uint32_t kBar0 = 0x10, kRom = 0x30;

bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) { return a < b + blen && b < a + alen; }

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

// A trapped part of a BAR on the PIO or MMIO bus.
struct BarMapper::Trap final : BusDevice {
  Trap(AccessHandler& h, int b, vfio::Area a) : handler(h), bar(b), area(a) {}
  void read(uint64_t offset, std::span<uint8_t> data) override { handler.bar_read(bar, area.offset + offset, data); }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    handler.bar_write(bar, area.offset + offset, data);
  }
  AccessHandler& handler;
  int bar;
  vfio::Area area;
  bool added = false;
};

BarMapper::BarMapper(vfio::Device& dev, Platform& platform, std::string name, AccessHandler& handler,
                     std::optional<layout::PciWindows> windows, bool verbose, vfio::DmaMapper* peer_dma)
    : dev_(dev),
      platform_(platform),
      name_(std::move(name)),
      handler_(handler),
      windows_(windows),
      verbose_(verbose),
      peers_(peer_dma ? std::make_unique<PeerDma>(*peer_dma, name_, verbose) : nullptr) {}

BarMapper::~BarMapper() { unmap_all(); }

void BarMapper::scan(std::span<const TrappedArea> must_trap, uint64_t page_size) {
  page_size_ = page_size;
  for (int i = 0; i < 6; i++) {
    Bar& b = bars_[static_cast<size_t>(i)];
    vfio::RegionInfo ri = dev_.region_info(static_cast<uint32_t>(i));
    if (ri.size == 0) continue;
    uint32_t reg = 0;
    dev_.read(VFIO_PCI_CONFIG_REGION_INDEX, kBar0 + 4u * static_cast<uint32_t>(i),
              std::span(reinterpret_cast<uint8_t*>(&reg), 4));
    b.index = i;
    b.size = std::bit_ceil(ri.size);
    if (reg & 1) {
      b.kind = pci::BarKind::Io;
      b.flags = 1;
      ri.mmappable = false;
    } else {
      b.kind = ((reg >> 1) & 3) == 2 ? pci::BarKind::Mmio64 : pci::BarKind::Mmio32;
      b.prefetchable = reg & 8;
      b.flags = reg & 0xf;
      if (b.kind == pci::BarKind::Mmio64 && i == 5) {  // its upper half would be past the last BAR
        eprint("passvm: {}: BAR 5 says it is 64-bit, which leaves no register for its upper half; "
                   "the guest does not see it\n", name_);
        b = Bar{};
        continue;
      }
    }
    std::optional<vfio::Area> trap[2];
    size_t n = 0;
    for (const TrappedArea& t : must_trap)
      if (t.bar == i && n < 2) trap[n++] = t.area;
    b.layout = plan_bar(ri, trap[0], trap[1], page_size);
    map_into_host(b);
    refresh_register(b);
    if (b.kind == pci::BarKind::Mmio64) i++;  // the upper half is part of this BAR
  }
}

void BarMapper::map_into_host(Bar& b) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<vfio::Area> mapped;
  for (auto a : b.layout.mapped) {
    void* p = dev_.map(static_cast<uint32_t>(b.index), a.offset, a.size);
    if (p) {
      mapped.push_back(a);
      b.host.push_back(p);
    } else {
      b.layout.trapped.push_back(a);  // the transport would not map it: trap it instead
    }
  }
  if (b.layout.whole_page && mapped.empty()) {  // not mappable after all: trap the BAR itself
    b.layout.whole_page = false;
    b.layout.trapped = {{0, b.size}};
  }
  b.layout.mapped = mapped;
  if (verbose_ && !mapped.empty())
    eprint("passvm: {}: BAR {} ({}) mmapped into passvm in {:.2f} ms ({} areas)\n", name_, b.index,
               layout::size_text(b.size), ms_since(t0), mapped.size());
  std::sort(b.layout.trapped.begin(), b.layout.trapped.end(), [](auto x, auto y) { return x.offset < y.offset; });
  for (auto a : b.layout.trapped) b.traps.push_back(std::make_unique<Trap>(handler_, b.index, a));
  if (b.layout.whole_page && !b.host.empty())
    b.page_trap = std::make_unique<Trap>(handler_, b.index, vfio::Area{0, b.size});
}

std::vector<pci::BarRequest> BarMapper::requests() const {
  std::vector<pci::BarRequest> out;
  for (const Bar& b : bars_)
    if (b.index >= 0) out.push_back({b.index, b.kind, b.size, b.prefetchable});
  if (rom_) out.push_back({pci::kRomBarIndex, pci::BarKind::Mmio32, rom_->size(), false});
  return out;
}

void BarMapper::assign(int index, uint64_t address) {
  if (index == pci::kRomBarIndex && rom_) {
    rom_->write_register(static_cast<uint32_t>(address));  // placed, not enabled: the guest enables it to read
    refresh_rom_register();
    return;
  }
  if (index < 0 || index >= 6 || !exists(index)) {
    eprint("passvm: {}: no BAR {} to assign\n", name_, index);
    return;
  }
  Bar& b = bars_[static_cast<size_t>(index)];
  b.address = address & ~(b.size - 1);
  if (b.kind != pci::BarKind::Mmio64) b.address &= 0xffffffff;
  refresh_register(b);
  update();
}

void BarMapper::refresh_register(const Bar& b) {
  uint32_t off = 4u * static_cast<uint32_t>(b.index);
  uint32_t low_mask = b.kind == pci::BarKind::Io ? ~3u : ~0xfu;
  pci::store_le(&regs_[off], 4, (static_cast<uint32_t>(b.address) & low_mask) | b.flags);
  if (b.kind == pci::BarKind::Mmio64) pci::store_le(&regs_[off + 4], 4, static_cast<uint32_t>(b.address >> 32));
}

void BarMapper::refresh_rom_register() {
  pci::store_le(&regs_[kRom - kBar0], 4, rom_ ? rom_->register_value() : 0);
}

void BarMapper::write_registers(uint32_t offset, std::span<const uint8_t> bytes) {
  bool bar = false, rom = false;
  for (size_t i = 0; i < bytes.size(); i++) {
    uint32_t o = offset + static_cast<uint32_t>(i);
    if (!is_register(o)) continue;
    regs_[o - kBar0] = bytes[i];
    (o < kRom ? bar : rom) = true;
  }
  if (rom) {
    // No ROM: the register reads as zero, as the spec has it.
    if (rom_) rom_->write_register(pci::load_le(&regs_[kRom - kBar0], 4));
    refresh_rom_register();
    update_rom();
  }
  if (!bar) {
    if (rom) update();  // a BAR the ROM kept from its place may have it now
    return;
  }
  std::array<bool, 6> owned{};
  for (Bar& b : bars_) {
    if (b.index < 0) continue;
    uint32_t off = 4u * static_cast<uint32_t>(b.index);
    uint64_t raw = pci::load_le(&regs_[off], 4);
    if (b.kind == pci::BarKind::Mmio64) raw |= static_cast<uint64_t>(pci::load_le(&regs_[off + 4], 4)) << 32;
    uint64_t mask = ~(b.size - 1) & (b.kind == pci::BarKind::Io ? ~uint64_t{3} : ~uint64_t{0xf});
    if (b.kind != pci::BarKind::Mmio64) mask &= 0xffffffff;
    b.address = raw & mask;
    refresh_register(b);
    owned[static_cast<size_t>(b.index)] = true;
    if (b.kind == pci::BarKind::Mmio64 && b.index < 5) owned[static_cast<size_t>(b.index) + 1] = true;
  }
  for (size_t i = 0; i < 6; i++)
    if (!owned[i]) pci::store_le(&regs_[4 * i], 4, 0);  // unimplemented BARs are hardwired to 0
  update();
}

void BarMapper::set_command(uint16_t command) {
  command_ = command;
  update_rom();
  update();
}

void BarMapper::update_rom() {
  if (!rom_) return;
  const uint64_t at = rom_->address();
  bool visible = (command_ & 2) && rom_->enabled();
  if (visible && windows_ && !windows_->mmio32.holds(at, rom_->size())) {
    refuse(fmt::format("ROM at {:#x} (size {:#x}) lies outside the 32-bit PCI window; left unmapped", at,
                       rom_->size()));
    visible = false;
  }
  try {
    if (!rom_->map(platform_, visible))
      refuse(fmt::format("ROM at {:#x} overlaps another device's registers; left unmapped", at));
  } catch (const std::exception& e) {
    // KVM would not remove the ROM's memory slot: the guest's write is taken, the ROM stays where it was.
    refuse(fmt::format("cannot move or hide the ROM: {}", e.what()));
  }
}

bool BarMapper::acceptable(const Bar& b, uint64_t address) const {
  bool io = b.kind == pci::BarKind::Io;
  if (windows_) {
    bool ok = io ? windows_->io.holds(address, b.size)
                 : windows_->mmio32.holds(address, b.size) || windows_->mmio64.holds(address, b.size);
    if (!ok) return false;
  }
  for (const Bar& o : bars_) {
    if (&o == &b || o.index < 0 || !o.mapped_at || (o.kind == pci::BarKind::Io) != io) continue;
    if (overlaps(address, b.size, *o.mapped_at, o.tail_claimed ? page_size_ : o.size)) return false;
  }
  return true;
}

std::optional<uint64_t> BarMapper::memory_placement(const Bar& b) const {
  if (b.index < 0 || b.kind == pci::BarKind::Io) return std::nullopt;
  if (b.mapped_at) return b.mapped_at;
  if (decoding(b)) return b.address;
  return std::nullopt;
}

void BarMapper::update() {
  // Every BAR that moves or goes off leaves first: one placed where another is leaving must find the
  // place free, whatever their order.
  for (Bar& b : bars_) {
    if (b.index < 0 || !b.mapped_at) continue;
    bool want = decoding(b);
    if (!want || b.mapped_at != b.address) unmap(b);
  }
  // A BAR mapped as a whole page into which another BAR now goes is trapped instead, and one trapped
  // for sharing its page that has it to itself again is mapped (both done below).
  for (Bar& b : bars_) {
    if (b.tail_claimed && another_bar_in_page(b, *b.mapped_at)) unmap(b);
    if (b.page_trapped && b.page_shared && page_is_ours(b, *b.mapped_at)) unmap(b);
  }
  for (Bar& b : bars_) {
    if (b.index < 0 || b.mapped_at) continue;
    bool want = decoding(b);
    if (!want) continue;
    if (!acceptable(b, b.address)) {
      refuse(fmt::format("BAR {} at {:#x} (size {:#x}) lies outside the PCI windows or over another BAR; left "
                         "unmapped", b.index, b.address, b.size));
      continue;
    }
    map(b, b.address);
  }
}

void BarMapper::map(Bar& b, uint64_t address) {
  bool io = b.kind == pci::BarKind::Io;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    // A whole-page BAR whose guest page is not all its own: mapping the page would hide what else is in
    // it, so the BAR is trapped.
    if (b.page_trap && !page_is_ours(b, address)) return trap_whole_page_bar(b, address, true);
    if (b.page_trap && b.size < page_size_) {
      platform_.add_trap(false, address + b.size, page_size_ - b.size, &tail_);
      b.tail_claimed = true;
    }
    for (size_t k = 0; k < b.layout.mapped.size(); k++)
      b.slots.push_back(platform_.map_memory(address + b.layout.mapped[k].offset, b.layout.mapped[k].size,
                                             b.host[k], false));
    for (auto& t : b.traps) {
      platform_.add_trap(io, address + t->area.offset, t->area.size, t.get());
      t->added = true;
    }
    b.mapped_at = address;
    remaps_++;
    std::string peers = io ? "" : map_for_peers(b, address);
    if (verbose_ && !io)
      placements_said_.say(fmt::format("BAR {} ({}) mapped into the guest at {:#x} in {:.2f} ms ({} memory slots, {} "
                                       "traps; peer-to-peer DMA {})", b.index, layout::size_text(b.size), address,
                                       ms_since(t0), b.slots.size(), b.traps.size(), peers));
  } catch (const std::exception& e) {
    b.mapped_at = address;  // so unmap undoes what was done
    if (!unmap(b)) return;  // said; it stays there as far as it got
    if (b.page_trap) {  // its page overlaps another device's memory slot
      try {
        return trap_whole_page_bar(b, address, false);
      } catch (const std::exception&) {
      }
    }
    refuse(fmt::format("cannot map BAR {} at {:#x}: {}; left unmapped", b.index, address, e.what()));
  }
}

void BarMapper::trap_whole_page_bar(Bar& b, uint64_t address, bool shared) {
  platform_.add_trap(false, address, b.size, b.page_trap.get());
  b.page_trapped = true;
  b.page_shared = shared;
  b.mapped_at = address;
  remaps_++;
  if (verbose_)
    placements_said_.say(fmt::format("BAR {} ({}) at {:#x} shares its page: trapped instead of mapped", b.index,
                                     layout::size_text(b.size), address));
}

// The guest page of a whole-page BAR at `address` holds nothing else: the BAR starts it, no trapped
// registers (another device's) lie in the rest of it, and no other BAR of this one is or is about to be
// placed there. Memory slots need no check here: KVM refuses overlapping ones, and that failure is
// trapped as well. Once mapped, the rest of the page is claimed on the bus (tail_), so another device's
// registers placed there later are refused instead of hidden.
bool BarMapper::page_is_ours(const Bar& b, uint64_t address) {
  if (address % page_size_ != 0) return false;
  if (!platform_.mmio_free(address + b.size, page_size_ - b.size)) return false;
  return !another_bar_in_page(b, address);
}

bool BarMapper::another_bar_in_page(const Bar& b, uint64_t address) const {
  for (const Bar& o : bars_) {
    std::optional<uint64_t> at = &o == &b ? std::nullopt : memory_placement(o);
    if (at && overlaps(address, page_size_, *at, o.size)) return true;
  }
  return false;
}

// Returns what became of peer-to-peer DMA into the BAR, for -v.
std::string BarMapper::map_for_peers(Bar& b, uint64_t address) {
  if (!peers_) return "off";
  for (size_t k = 0; k < b.layout.mapped.size(); k++) {
    const vfio::Area& a = b.layout.mapped[k];
    peers_->map(b.index, address + a.offset, a.size, b.host[k]);
    b.dma.push_back({address + a.offset, a.size});
  }
  return b.dma.empty() ? "off (nothing mappable)" : "queued for the IOMMU";
}

void BarMapper::stop_peer_dma() {
  for (Bar& b : bars_) b.dma.clear();
  if (peers_) peers_refused_ = peers_->refused();
  peers_.reset();  // stops a map in progress after its piece, unmaps everything
}

uint64_t BarMapper::refused() const {
  return refusals_.count() + (peers_ ? peers_->refused() : peers_refused_);
}

void BarMapper::wait_peer_dma() {
  if (peers_) peers_->wait_idle();
}

bool BarMapper::unmap(Bar& b, bool for_good) {
  if (!b.mapped_at) return true;
  bool io = b.kind == pci::BarKind::Io;
  // The IOMMU first: no peer may reach the BAR's pages once they are out of the guest.
  if (peers_)
    for (const vfio::Area& d : b.dma) peers_->unmap(d.offset);
  b.dma.clear();
  // Then the memory slots, each on its own: one KVM keeps leaves the BAR where it is.
  std::vector<uint32_t> kept;
  std::string why;
  for (uint32_t slot : b.slots) {
    try {
      platform_.unmap_memory(slot);
    } catch (const std::exception& e) {
      kept.push_back(slot);
      why = e.what();
    }
  }
  b.slots = std::move(kept);
  if (!b.slots.empty()) {
    refuse(fmt::format("cannot take BAR {} out of the guest at {:#x}: {}; {}", b.index, *b.mapped_at, why,
                       for_good ? "its pages stay mapped in passvm" : "it stays there for now"));
    if (!for_good) return false;
  }
  auto remove_trap = [&](bool pio, uint64_t base) {
    try {
      platform_.remove_trap(pio, base);
    } catch (const std::exception& e) {
      eprint("passvm: {}: removing BAR {}'s trap at {:#x}: {}\n", name_, b.index, base, e.what());
    }
  };
  if (b.page_trapped) remove_trap(false, *b.mapped_at);
  b.page_trapped = b.page_shared = false;
  if (b.tail_claimed) remove_trap(false, *b.mapped_at + b.size);
  b.tail_claimed = false;
  for (auto& t : b.traps)
    if (t->added) {
      remove_trap(io, *b.mapped_at + t->area.offset);
      t->added = false;
    }
  b.mapped_at.reset();
  return b.slots.empty();
}

void BarMapper::unmap_all() {
  if (rom_) {
    try {
      rom_->unmap(platform_);
    } catch (const std::exception& e) {
      eprint("passvm: {}: unmapping the ROM: {}\n", name_, e.what());
    }
  }
  for (Bar& b : bars_) {
    // A slot KVM kept still points at the BAR's pages: unmapped, they could be reused for anything.
    if (unmap(b, true))
      for (size_t k = 0; k < b.host.size(); k++) dev_.unmap(b.host[k], b.layout.mapped[k].size);
    b.host.clear();
  }
}

}  // namespace passvm::passthru
