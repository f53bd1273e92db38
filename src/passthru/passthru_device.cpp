#include "passthru/passthru_device.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <fmt/format.h>

#include "memory/layout.h"
#include "passthru/handover.h"

namespace passvm::passthru {
namespace {

constexpr uint32_t kBar0 = 0x10, kBarEnd = 0x28, kRom = 0x30, kIntLine = 0x3c, kHeaderType = 0x0e, kCommand = 0x04;
constexpr uint64_t kStopTag = ~uint64_t{0};
constexpr uint16_t kDecodeAndMaster = 0x7;  // command register: I/O space, memory space, bus master

uint32_t le(const std::vector<uint8_t>& v, uint32_t off, int size) { return pci::load_le(v.data() + off, size); }

bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) { return a < b + blen && b < a + alen; }

// [address, address + size) lies wholly inside the window [start, start + window).
bool inside(uint64_t address, uint64_t size, uint64_t start, uint64_t window) {
  return address >= start && size <= window && address - start <= window - size;
}


}  // namespace

// A trapped part of a BAR on the PIO or MMIO bus.
struct PassthruDevice::Trap final : BusDevice {
  Trap(PassthruDevice* d, int b, vfio::Area a) : dev(d), bar(b), area(a) {}
  void read(uint64_t offset, std::span<uint8_t> data) override { dev->bar_read(bar, area.offset + offset, data); }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    dev->bar_write(bar, area.offset + offset, data);
  }
  PassthruDevice* dev;
  int bar;
  vfio::Area area;
  bool added = false;
};

PassthruDevice::PassthruDevice(std::unique_ptr<vfio::Device> device, std::unique_ptr<Platform> platform,
                               PassthruOptions options)
    : dev_(std::move(device)), platform_(std::move(platform)), options_(options), name_(dev_->name()) {
  long ps = sysconf(_SC_PAGESIZE);
  page_size_ = ps > 0 ? static_cast<uint64_t>(ps) : 4096;
  try {
    setup();
  } catch (...) {
    teardown();
    throw;
  }
}

PassthruDevice::~PassthruDevice() { teardown(); }

void PassthruDevice::setup() {
  report_reset();
  HandoverState handed = quiesce_for_handover(*dev_);
  if (handed.active)
    fmt::print(stderr, "passvm: {}: still running after its {} reset: {}; stopped and its rings cleared before "
               "the guest sees it\n", name_, reset_method_.empty() ? "(absent)" : reset_method_, handed.found);
  vfio::RegionInfo cfg = dev_->region_info(VFIO_PCI_CONFIG_REGION_INDEX);
  if (cfg.size < 0x40)
    throw vfio::VfioError(fmt::format("{}: the transport exposes no PCI config space", name_));
  config_size_ = static_cast<uint32_t>(std::min<uint64_t>(cfg.size, 4096));
  std::vector<uint8_t> raw(4096, 0);
  dev_->read(VFIO_PCI_CONFIG_REGION_INDEX, 0, std::span(raw.data(), config_size_));
  if (raw[0] == 0xff && raw[1] == 0xff)
    throw vfio::VfioError(fmt::format(
        "{}: the device reads as all ones{}: it is not responding. Check `lspci -s {}` on the host; a device "
        "that stays like this needs its slot or the host power-cycled",
        name_, reset_method_.empty() ? "" : fmt::format(" after its {} reset", reset_method_), name_));
  if ((raw[kHeaderType] & 0x7f) != 0)
    throw vfio::VfioError(fmt::format("{}: header type {} is a bridge or card bus; only endpoint devices can be "
                                      "passed through",
                                      name_, raw[kHeaderType] & 0x7f));

  caps_ = plan_capabilities(std::span(raw.data(), config_size_));
  shadow_ = raw;
  emulated_.assign(4096, false);
  auto emulate = [&](uint32_t off, uint32_t len) {
    for (uint32_t i = off; i < off + len && i < 4096; i++) emulated_[i] = true;
  };
  auto zero = [&](uint32_t off, uint32_t len) {
    emulate(off, len);
    for (uint32_t i = off; i < off + len && i < 4096; i++) shadow_[i] = 0;
  };
  if (config_size_ < 4096) zero(config_size_, 4096 - config_size_);
  emulate(kHeaderType, 1);
  shadow_[kHeaderType] &= 0x7f;  // the host's bit says nothing of the guest slot: the PCI root sets it
  zero(kBar0, kBarEnd - kBar0);
  zero(kRom, 4);
  emulate(kIntLine, 1);

  if (caps_.msi) {
    uint32_t m = *caps_.msi;
    uint16_t ctrl = static_cast<uint16_t>(le(raw, m + 2, 2));
    msi_64_ = ctrl & 0x80;
    msi_per_vector_ = ctrl & 0x100;
    msi_size_ = 10 + (msi_64_ ? 4 : 0) + (msi_per_vector_ ? 10 : 0);
    emulate(m, msi_size_);
    // The whole capability is emulated, mask and pending bits included: masking parks the vector's
    // irqfd as for MSI-X, so the device's own mask bits are never touched.
    pci::store_le(&shadow_[m + 2], 2, ctrl & ~0x71u);
    for (uint32_t i = 4; i < msi_size_; i++) shadow_[m + i] = 0;
  }
  if (caps_.msix) {
    uint32_t m = *caps_.msix;
    uint16_t ctrl = static_cast<uint16_t>(le(raw, m + 2, 2));
    uint32_t table = le(raw, m + 4, 4), pba = le(raw, m + 8, 4);
    msix_ = std::make_unique<MsixTable>((ctrl & 0x7ffu) + 1);
    msix_table_bar_ = static_cast<int>(table & 7);
    msix_pba_bar_ = static_cast<int>(pba & 7);
    msix_table_offset_ = table & ~7u;
    msix_pba_offset_ = pba & ~7u;
    auto fits = [&](int bar, uint64_t off, uint64_t len) {
      return bar < 6 && dev_->region_info(static_cast<uint32_t>(bar)).size >= off + len;
    };
    if (!fits(msix_table_bar_, msix_table_offset_, msix_->table_bytes()) ||
        !fits(msix_pba_bar_, msix_pba_offset_, msix_->pba_bytes())) {
      fmt::print(stderr, "passvm: {}: MSI-X table or PBA lies outside its BAR; MSI-X is not offered\n", name_);
      msix_.reset();
      msix_table_bar_ = msix_pba_bar_ = -1;
      caps_.msix.reset();
    } else {
      emulate(m, 12);
      pci::store_le(&shadow_[m + 2], 2, ctrl & 0x3fffu);
    }
  }
  for (auto [off, value] : caps_.overrides) {
    emulate(off, 1);
    shadow_[off] = value;
  }
  for (auto a : caps_.hidden) zero(static_cast<uint32_t>(a.offset), static_cast<uint32_t>(a.size));
  // The host (vfio-pci's open enables the device) may leave decoding and bus mastering on. The guest must
  // find the device as after a reset: no decoding before its BARs are placed, no DMA before it asks.
  command_ = static_cast<uint16_t>(le(raw, kCommand, 2) & ~uint32_t{kDecodeAndMaster});
  if (command_ != le(raw, kCommand, 2)) {
    uint8_t cmd[2];
    pci::store_le(cmd, 2, command_);
    device_config_write(kCommand, cmd);
  }

  scan_bars();
  map_bars_into_host();
  rom_ = options_.rom_file.empty() ? RomBar::from_device(*dev_) : RomBar::from_file(options_.rom_file);

  if (options_.watcher_thread) {
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (epoll_fd_ < 0 || stop_fd_ < 0)
      throw std::runtime_error(fmt::format("{}: cannot create the interrupt watcher: {}", name_, strerror(errno)));
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = kStopTag;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, stop_fd_, &ev);
  }
  msi_vectors_ = std::make_unique<Vectors>(*platform_, name_ + " MSI", epoll_fd_, 0);
  msix_vectors_ = std::make_unique<Vectors>(*platform_, name_ + " MSI-X", epoll_fd_, 1);
  if (options_.watcher_thread) watcher_ = std::thread([this] { watch(); });
}

void PassthruDevice::scan_bars() {
  for (int i = 0; i < 6; i++) {
    Bar& b = bars_[static_cast<size_t>(i)];
    vfio::RegionInfo ri = dev_->region_info(static_cast<uint32_t>(i));
    if (ri.size == 0) continue;
    uint32_t reg = 0;
    dev_->read(VFIO_PCI_CONFIG_REGION_INDEX, kBar0 + 4u * static_cast<uint32_t>(i),
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
    }
    std::optional<vfio::Area> table, pba;
    if (msix_ && msix_table_bar_ == i) table = vfio::Area{msix_table_offset_, msix_->table_bytes()};
    if (msix_ && msix_pba_bar_ == i) pba = vfio::Area{msix_pba_offset_, msix_->pba_bytes()};
    b.layout = plan_bar(ri, table, pba, page_size_);
    refresh_bar_shadow(b);
    if (b.kind == pci::BarKind::Mmio64) i++;  // the upper half is part of this BAR
  }
}

void PassthruDevice::map_bars_into_host() {
  for (Bar& b : bars_) {
    if (b.index < 0) continue;
    std::vector<vfio::Area> mapped;
    for (auto a : b.layout.mapped) {
      void* p = dev_->map(static_cast<uint32_t>(b.index), a.offset, a.size);
      if (p) {
        mapped.push_back(a);
        b.host.push_back(p);
      } else {
        b.layout.trapped.push_back(a);  // the transport would not map it: trap it instead
      }
    }
    b.layout.mapped = mapped;
    std::sort(b.layout.trapped.begin(), b.layout.trapped.end(), [](auto x, auto y) { return x.offset < y.offset; });
    for (auto a : b.layout.trapped) b.traps.push_back(std::make_unique<Trap>(this, b.index, a));
  }
}

void PassthruDevice::teardown() {
  if (watcher_.joinable()) {
    uint64_t one = 1;
    if (::write(stop_fd_, &one, sizeof one) < 0) {}
    watcher_.join();
  }
  std::lock_guard g(lock_);
  auto quietly = [&](auto&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      fmt::print(stderr, "passvm: {}: teardown: {}\n", name_, e.what());
    }
  };
  // Stop the device first: no new DMA into guest RAM (still mapped in the IOMMU until the machine unmaps
  // it after every device is down) and no decoding while its BARs go away.
  if (dev_ && (command_ & kDecodeAndMaster))
    quietly([&] {
      uint8_t cmd[2];
      pci::store_le(cmd, 2, static_cast<uint16_t>(command_ & ~kDecodeAndMaster));
      device_config_write(kCommand, cmd);
    });
  if (msi_enabled_) quietly([&] { dev_->disable_irq(VFIO_PCI_MSI_IRQ_INDEX); });
  if (msix_enabled_) quietly([&] { dev_->disable_irq(VFIO_PCI_MSIX_IRQ_INDEX); });
  msi_enabled_ = msix_enabled_ = false;
  msi_vectors_.reset();
  msix_vectors_.reset();
  quietly([&] { disable_intx(); });
  if (rom_) quietly([&] { rom_->unmap(*platform_); });
  for (Bar& b : bars_) {
    unmap_bar(b);
    for (size_t k = 0; k < b.host.size(); k++) dev_->unmap(b.host[k], b.layout.mapped[k].size);
    b.host.clear();
  }
  for (int* fd : {&intx_fd_, &intx_resample_fd_, &epoll_fd_, &stop_fd_})
    if (*fd >= 0) {
      close(*fd);
      *fd = -1;
    }
  // A device whose reset leaves its DMA engines programmed is stopped by hand, so that its next owner
  // does not inherit our guest's rings (handover.h).
  if (dev_) quietly([&] { quiesce_for_handover(*dev_); });
  // No reset of our own: releasing the device makes vfio-pci reset it (and restore the config space
  // it saved at open), as for any VFIO user. A second function reset would only add its 100 ms wait.
  dev_.reset();
}

void PassthruDevice::report_reset() {
  // vfio-pci reset the device when it was opened; a second reset would only add its wait (100 ms for FLR).
  reset_method_ = dev_->reset_method();
  if (reset_method_.empty())
    fmt::print(stderr, "passvm: {} has no reset method; it keeps the state it was left in\n", name_);
  else
    fmt::print(stderr, "passvm: {} reset ({})\n", name_, reset_method_);
}

// ---- config space ----

void PassthruDevice::device_config_read(uint32_t offset, std::span<uint8_t> out) {
  std::fill(out.begin(), out.end(), 0);
  if (offset >= config_size_) return;
  size_t len = std::min<size_t>(out.size(), config_size_ - offset);
  try {
    dev_->read(VFIO_PCI_CONFIG_REGION_INDEX, offset, out.first(len));
  } catch (const std::exception& e) {
    std::fill(out.begin(), out.end(), 0xff);
    fmt::print(stderr, "passvm: {}: {}\n", name_, e.what());
  }
}

void PassthruDevice::device_config_write(uint32_t offset, std::span<const uint8_t> in) {
  if (offset + in.size() > config_size_) return;
  try {
    dev_->write(VFIO_PCI_CONFIG_REGION_INDEX, offset, in);
  } catch (const std::exception& e) {
    fmt::print(stderr, "passvm: {}: {}\n", name_, e.what());
  }
}

uint32_t PassthruDevice::config_read(uint32_t offset, int size) {
  counters_.config_reads++;
  if ((size != 1 && size != 2 && size != 4) || offset % static_cast<uint32_t>(size) || offset >= 4096)
    return 0xffffffff;
  std::lock_guard g(lock_);
  uint8_t buf[4] = {};
  bool any_device = false;
  for (int i = 0; i < size; i++) any_device |= !emulated_[offset + static_cast<uint32_t>(i)];
  if (any_device) device_config_read(offset, std::span(buf, static_cast<size_t>(size)));
  if (caps_.msi && msi_per_vector_ && overlaps(offset, size, msi_pending_offset(), 4)) refresh_msi_pending();
  for (int i = 0; i < size; i++) {
    uint32_t o = offset + static_cast<uint32_t>(i);
    if (emulated_[o]) buf[i] = shadow_[o];
  }
  return pci::load_le(buf, size);
}

void PassthruDevice::config_write(uint32_t offset, int size, uint32_t value) {
  counters_.config_writes++;
  if ((size != 1 && size != 2 && size != 4) || offset % static_cast<uint32_t>(size) || offset >= 4096) return;
  std::lock_guard g(lock_);
  uint8_t buf[4];
  pci::store_le(buf, size, value);
  uint32_t end = offset + static_cast<uint32_t>(size);
  bool all_device = true;
  for (uint32_t o = offset; o < end; o++) all_device &= !emulated_[o];
  if (all_device) {
    device_config_write(offset, std::span(buf, static_cast<size_t>(size)));
  } else {
    for (uint32_t o = offset; o < end; o++)
      if (!emulated_[o]) device_config_write(o, std::span(&buf[o - offset], 1));
  }
  if (overlaps(offset, size, kCommand, 2)) {
    uint8_t cmd[2];
    device_config_read(kCommand, cmd);
    command_ = static_cast<uint16_t>(pci::load_le(cmd, 2));
    update_mappings();
  }
  if (overlaps(offset, size, kIntLine, 1)) shadow_[kIntLine] = buf[kIntLine - offset];
  if (overlaps(offset, size, kBar0, kBarEnd - kBar0)) write_bar_register(offset, size, value);
  if (overlaps(offset, size, kRom, 4)) write_rom_register(offset, size, value);
  if (caps_.msi && overlaps(offset, size, *caps_.msi, msi_size_)) msi_write(offset, size, value);
  if (caps_.msix && overlaps(offset, size, *caps_.msix, 4)) msix_control_write(offset, size, value);
}

// ---- BARs ----

std::vector<pci::BarRequest> PassthruDevice::bar_requests() const {
  std::vector<pci::BarRequest> out;
  for (const Bar& b : bars_)
    if (b.index >= 0) out.push_back({b.index, b.kind, b.size, b.prefetchable});
  if (rom_) out.push_back({pci::kRomBarIndex, pci::BarKind::Mmio32, rom_->size(), false});
  return out;
}

void PassthruDevice::assign_bar(int index, uint64_t address) {
  std::lock_guard g(lock_);
  if (index == pci::kRomBarIndex && rom_) {
    rom_->write_register(static_cast<uint32_t>(address));  // placed, not enabled: the guest enables it to read
    pci::store_le(&shadow_[kRom], 4, rom_->register_value());
    return;
  }
  if (index < 0 || index >= 6 || bars_[static_cast<size_t>(index)].index != index) {
    fmt::print(stderr, "passvm: {}: no BAR {} to assign\n", name_, index);
    return;
  }
  Bar& b = bars_[static_cast<size_t>(index)];
  b.address = address & ~(b.size - 1);
  if (b.kind != pci::BarKind::Mmio64) b.address &= 0xffffffff;
  refresh_bar_shadow(b);
  update_mappings();
}

void PassthruDevice::refresh_bar_shadow(Bar& b) {
  uint32_t off = kBar0 + 4u * static_cast<uint32_t>(b.index);
  uint32_t low_mask = b.kind == pci::BarKind::Io ? ~3u : ~0xfu;
  pci::store_le(&shadow_[off], 4, (static_cast<uint32_t>(b.address) & low_mask) | b.flags);
  if (b.kind == pci::BarKind::Mmio64) pci::store_le(&shadow_[off + 4], 4, static_cast<uint32_t>(b.address >> 32));
}

void PassthruDevice::write_bar_register(uint32_t offset, int size, uint32_t value) {
  for (int i = 0; i < size; i++) {
    uint32_t o = offset + static_cast<uint32_t>(i);
    if (o >= kBar0 && o < kBarEnd) shadow_[o] = static_cast<uint8_t>(value >> (8 * i));
  }
  std::array<bool, 6> owned{};
  for (Bar& b : bars_) {
    if (b.index < 0) continue;
    uint32_t off = kBar0 + 4u * static_cast<uint32_t>(b.index);
    uint64_t raw = le(shadow_, off, 4);
    if (b.kind == pci::BarKind::Mmio64) raw |= static_cast<uint64_t>(le(shadow_, off + 4, 4)) << 32;
    uint64_t mask = ~(b.size - 1) & (b.kind == pci::BarKind::Io ? ~uint64_t{3} : ~uint64_t{0xf});
    if (b.kind != pci::BarKind::Mmio64) mask &= 0xffffffff;
    b.address = raw & mask;
    refresh_bar_shadow(b);
    owned[static_cast<size_t>(b.index)] = true;
    if (b.kind == pci::BarKind::Mmio64) owned[static_cast<size_t>(b.index) + 1] = true;
  }
  for (size_t i = 0; i < 6; i++)
    if (!owned[i]) pci::store_le(&shadow_[kBar0 + 4 * i], 4, 0);  // unimplemented BARs are hardwired to 0
  update_mappings();
}

void PassthruDevice::write_rom_register(uint32_t offset, int size, uint32_t value) {
  if (!rom_) return;  // no ROM: the register reads as zero, as the spec has it
  for (int i = 0; i < size; i++) {
    uint32_t o = offset + static_cast<uint32_t>(i);
    if (o >= kRom && o < kRom + 4) shadow_[o] = static_cast<uint8_t>(value >> (8 * i));
  }
  rom_->write_register(le(shadow_, kRom, 4));
  pci::store_le(&shadow_[kRom], 4, rom_->register_value());
  update_rom_mapping();
}

void PassthruDevice::update_rom_mapping() {
  if (!rom_) return;
  const uint64_t at = rom_->address();
  bool visible = (command_ & 2) && rom_->enabled();
  if (visible && options_.check_windows && !inside(at, rom_->size(), layout::kMmio32Start, layout::kMmio32Size)) {
    counters_.refused++;
    fmt::print(stderr, "passvm: {}: ROM at {:#x} (size {:#x}) lies outside the 32-bit PCI window; left unmapped\n",
               name_, at, rom_->size());
    visible = false;
  }
  if (!rom_->map(*platform_, visible)) {
    counters_.refused++;
    fmt::print(stderr, "passvm: {}: ROM at {:#x} overlaps another device's registers; left unmapped\n", name_, at);
  }
}

bool PassthruDevice::decoding(const Bar& b) const { return command_ & (b.kind == pci::BarKind::Io ? 1 : 2); }

bool PassthruDevice::address_acceptable(const Bar& b, uint64_t address) const {
  bool io = b.kind == pci::BarKind::Io;
  if (options_.check_windows) {
    bool ok = io ? inside(address, b.size, layout::kIoBarStart, layout::kIoBarSize)
                 : inside(address, b.size, layout::kMmio32Start, layout::kMmio32Size) ||
                       inside(address, b.size, layout::kMmio64Start, layout::kMmio64Size);
    if (!ok) return false;
  }
  for (const Bar& o : bars_) {
    if (&o == &b || o.index < 0 || !o.mapped_at || (o.kind == pci::BarKind::Io) != io) continue;
    if (overlaps(address, b.size, *o.mapped_at, o.size)) return false;
  }
  return true;
}

void PassthruDevice::update_mappings() {
  update_rom_mapping();
  for (Bar& b : bars_) {
    if (b.index < 0) continue;
    bool want = decoding(b);
    if (want && b.mapped_at == b.address) continue;
    if (b.mapped_at) unmap_bar(b);
    if (!want) continue;
    if (!address_acceptable(b, b.address)) {
      counters_.refused++;
      fmt::print(stderr, "passvm: {}: BAR {} at {:#x} (size {:#x}) lies outside the PCI windows or over another "
                         "BAR; left unmapped\n", name_, b.index, b.address, b.size);
      continue;
    }
    map_bar(b, b.address);
  }
}

void PassthruDevice::map_bar(Bar& b, uint64_t address) {
  bool io = b.kind == pci::BarKind::Io;
  try {
    for (size_t k = 0; k < b.layout.mapped.size(); k++)
      b.slots.push_back(platform_->map_memory(address + b.layout.mapped[k].offset, b.layout.mapped[k].size,
                                              b.host[k], false));
    for (auto& t : b.traps) {
      platform_->add_trap(io, address + t->area.offset, t->area.size, t.get());
      t->added = true;
    }
    b.mapped_at = address;
    counters_.remaps++;
  } catch (const std::exception& e) {
    counters_.refused++;
    fmt::print(stderr, "passvm: {}: cannot map BAR {} at {:#x}: {}; left unmapped\n", name_, b.index, address,
               e.what());
    b.mapped_at = address;  // so unmap_bar undoes what was done
    unmap_bar(b);
  }
}

void PassthruDevice::unmap_bar(Bar& b) {
  if (!b.mapped_at) return;
  bool io = b.kind == pci::BarKind::Io;
  try {
    for (uint32_t slot : b.slots) platform_->unmap_memory(slot);
    for (auto& t : b.traps)
      if (t->added) {
        platform_->remove_trap(io, *b.mapped_at + t->area.offset);
        t->added = false;
      }
  } catch (const std::exception& e) {
    fmt::print(stderr, "passvm: {}: unmapping BAR {}: {}\n", name_, b.index, e.what());
  }
  b.slots.clear();
  b.mapped_at.reset();
}

bool PassthruDevice::is_msix_structure(int bar, uint64_t offset, uint64_t len) const {
  if (!msix_) return false;
  return (bar == msix_table_bar_ && overlaps(offset, len, msix_table_offset_, msix_->table_bytes())) ||
         (bar == msix_pba_bar_ && overlaps(offset, len, msix_pba_offset_, msix_->pba_bytes()));
}

void PassthruDevice::count_access(int bar, uint64_t offset, uint64_t len) {
  auto i = static_cast<size_t>(bar);
  if (bars_[i].kind == pci::BarKind::Io)
    counters_.pio++;
  else if (is_msix_structure(bar, offset, len))
    counters_.msix[i]++;
  else
    counters_.mmio[i]++;
}

// An access may straddle the edge of the MSI-X table or PBA (an 8-byte access at the table's last
// dword, say): each byte goes to what owns it, the emulated structure or the device's own register.
template <typename Fn>
void PassthruDevice::for_each_part(int bar, uint64_t offset, uint64_t len, Fn fn) const {
  struct Range {
    uint64_t start, end;
    Part part;
  };
  std::vector<Range> owned;
  if (msix_ && bar == msix_table_bar_)
    owned.push_back({msix_table_offset_, msix_table_offset_ + msix_->table_bytes(), Part::Table});
  if (msix_ && bar == msix_pba_bar_) owned.push_back({msix_pba_offset_, msix_pba_offset_ + msix_->pba_bytes(), Part::Pba});
  for (uint64_t at = offset, end = offset + len; at < end;) {
    Part part = Part::Device;
    uint64_t stop = end;
    for (const Range& r : owned) {
      if (at >= r.start && at < r.end) {
        part = r.part;
        stop = std::min(stop, r.end);
      } else if (r.start > at) {
        stop = std::min(stop, r.start);
      }
    }
    fn(part, at, stop - at, at - offset);
    at = stop;
  }
}

void PassthruDevice::bar_read(int bar, uint64_t offset, std::span<uint8_t> data) {
  if (bar < 0 || bar >= 6) return;
  count_access(bar, offset, data.size());
  for_each_part(bar, offset, data.size(), [&](Part part, uint64_t off, uint64_t n, uint64_t at) {
    std::span<uint8_t> piece = data.subspan(at, n);
    if (part == Part::Device) {
      try {
        dev_->read(static_cast<uint32_t>(bar), off, piece);
      } catch (const std::exception& e) {
        std::fill(piece.begin(), piece.end(), 0xff);
        fmt::print(stderr, "passvm: {}: {}\n", name_, e.what());
      }
      return;
    }
    std::lock_guard g(lock_);
    if (part == Part::Table) {
      // Entries are dwords: only whole aligned dwords read back; anything else reads as zero.
      std::fill(piece.begin(), piece.end(), 0);
      if (n % 4 == 0 && off % 4 == 0)
        for (uint64_t k = 0; k < n; k += 4) pci::store_le(&piece[k], 4, msix_->read(off - msix_table_offset_ + k, 4));
      return;
    }
    for (uint64_t k = 0; k < n; k++) {
      uint8_t byte = 0;
      const uint64_t first = (off + k - msix_pba_offset_) * 8;
      for (uint32_t bit = 0; bit < 8; bit++) {
        uint64_t v = first + bit;
        if (msix_enabled_ && v < msix_vectors_->count() && msix_vectors_->pending(static_cast<uint32_t>(v)))
          byte = static_cast<uint8_t>(byte | (1u << bit));
      }
      piece[k] = byte;
    }
  });
}

void PassthruDevice::bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) {
  if (bar < 0 || bar >= 6) return;
  count_access(bar, offset, data.size());
  for_each_part(bar, offset, data.size(), [&](Part part, uint64_t off, uint64_t n, uint64_t at) {
    std::span<const uint8_t> piece = data.subspan(at, n);
    if (part == Part::Device) {
      try {
        dev_->write(static_cast<uint32_t>(bar), off, piece);
      } catch (const std::exception& e) {
        fmt::print(stderr, "passvm: {}: {}\n", name_, e.what());
      }
      return;
    }
    // The PBA is read-only; table entries take whole aligned dwords only.
    if (part == Part::Pba || n % 4 != 0 || off % 4 != 0) return;
    std::lock_guard g(lock_);
    for (uint64_t k = 0; k < n; k += 4) {
      auto changed = msix_->write(off - msix_table_offset_ + k, 4, pci::load_le(&piece[k], 4));
      if (changed && msix_enabled_) apply_msix_vector(*changed);
    }
  });
}

// ---- MSI, MSI-X, INTx ----

void PassthruDevice::msi_write(uint32_t offset, int size, uint32_t value) {
  uint32_t m = *caps_.msi;
  auto writable = [&](uint32_t rel) -> uint8_t {
    if (rel == 2) return 0x71;  // enable, multiple message enable
    if (rel == 4) return 0xfc;
    if (rel >= 5 && rel < 8) return 0xff;
    if (rel >= 8 && rel < (msi_64_ ? 14u : 10u)) return 0xff;  // (upper address and) data
    if (msi_per_vector_ && m + rel >= msi_mask_offset() && m + rel < msi_mask_offset() + 4) return 0xff;
    return 0;  // the pending bits are read-only
  };
  for (int i = 0; i < size; i++) {
    uint32_t o = offset + static_cast<uint32_t>(i);
    if (o < m || o >= m + msi_size_) continue;
    uint8_t w = writable(o - m);
    shadow_[o] = static_cast<uint8_t>((shadow_[o] & ~w) | (static_cast<uint8_t>(value >> (8 * i)) & w));
  }
  apply_msi();
}

// MSI and MSI-X replace INTx: starting either takes INTx down first and gives it back if
// VFIO refuses the vectors, so a failed enable leaves the guest with a working interrupt.
bool PassthruDevice::start_vectors(uint32_t index, Vectors& vectors, uint32_t count, bool& enabled) {
  try {
    disable_intx();
    vectors.create(count);
    auto fds = vectors.fds();
    dev_->set_irq_eventfds(index, vfio::IrqAction::Trigger, 0, fds);
    enabled = true;
    return true;
  } catch (const std::exception& e) {
    fmt::print(stderr, "passvm: {}: cannot enable {}: {}\n", name_,
               index == VFIO_PCI_MSI_IRQ_INDEX ? "MSI" : "MSI-X", e.what());
    vectors.release();
    enable_intx();
    return false;
  }
}

void PassthruDevice::stop_vectors(uint32_t index, Vectors& vectors, bool& enabled) {
  try {
    dev_->disable_irq(index);
  } catch (const std::exception& e) {
    fmt::print(stderr, "passvm: {}: {}\n", name_, e.what());
  }
  vectors.release();
  enabled = false;
}

void PassthruDevice::apply_msi() {
  uint32_t m = *caps_.msi;
  uint32_t ctrl = le(shadow_, m + 2, 2);
  bool enable = ctrl & 1;
  uint32_t mmc = (ctrl >> 1) & 7, mme = std::min((ctrl >> 4) & 7, std::min(mmc, 5u));
  uint32_t n = 1u << mme;
  uint64_t addr = le(shadow_, m + 4, 4);
  if (msi_64_) addr |= static_cast<uint64_t>(le(shadow_, m + 8, 4)) << 32;
  uint32_t data = le(shadow_, m + (msi_64_ ? 12 : 8), 2);
  if (msi_enabled_ && (!enable || n != msi_vectors_->count())) {
    stop_vectors(VFIO_PCI_MSI_IRQ_INDEX, *msi_vectors_, msi_enabled_);
    if (!enable) enable_intx();
  }
  if (!enable) return;
  if (!msi_enabled_ && !start_vectors(VFIO_PCI_MSI_IRQ_INDEX, *msi_vectors_, n, msi_enabled_)) {
    shadow_[m + 2] &= static_cast<uint8_t>(~1u);  // what the guest reads is what is on: INTx
    return;
  }
  uint32_t mask = msi_per_vector_ ? le(shadow_, msi_mask_offset(), 4) : 0;
  for (uint32_t i = 0; i < n; i++) msi_vectors_->set(i, addr, (data & ~(n - 1)) | i, (mask >> i) & 1);
}

// Mask bits follow the data register (64-bit: +16, 32-bit: +12), pending bits follow them.
uint32_t PassthruDevice::msi_mask_offset() const { return *caps_.msi + (msi_64_ ? 16 : 12); }
uint32_t PassthruDevice::msi_pending_offset() const { return msi_mask_offset() + 4; }

// A masked vector's interrupt is held by its parked eventfd; the guest sees it as a pending bit.
void PassthruDevice::refresh_msi_pending() {
  uint32_t bits = 0;
  if (msi_enabled_)
    for (uint32_t i = 0; i < msi_vectors_->count(); i++)
      if (msi_vectors_->pending(i)) bits |= 1u << i;
  pci::store_le(&shadow_[msi_pending_offset()], 4, bits);
}

void PassthruDevice::msix_control_write(uint32_t offset, int size, uint32_t value) {
  uint32_t m = *caps_.msix;
  for (int i = 0; i < size; i++) {
    uint32_t o = offset + static_cast<uint32_t>(i);
    if (o == m + 3) shadow_[o] = static_cast<uint8_t>((shadow_[o] & 0x3f) | ((value >> (8 * i)) & 0xc0));
  }
  uint32_t ctrl = le(shadow_, m + 2, 2);
  bool enable = ctrl & 0x8000, masked = ctrl & 0x4000;
  if (!enable) {
    if (msix_enabled_) {
      stop_vectors(VFIO_PCI_MSIX_IRQ_INDEX, *msix_vectors_, msix_enabled_);
      enable_intx();
    }
    return;
  }
  if (!msix_enabled_) {
    if (!start_vectors(VFIO_PCI_MSIX_IRQ_INDEX, *msix_vectors_, msix_->size(), msix_enabled_)) {
      shadow_[m + 3] &= 0x7f;  // what the guest reads is what is on: INTx
      return;
    }
  } else if (masked == msix_masked_) {
    return;
  }
  msix_masked_ = masked;
  for (uint32_t i = 0; i < msix_->size(); i++) apply_msix_vector(i);
}

void PassthruDevice::apply_msix_vector(uint32_t i) {
  const auto& e = msix_->entry(i);
  msix_vectors_->set(i, e.address(), e.data, msix_masked_ || e.masked());
}

void PassthruDevice::set_intx_gsi(uint32_t gsi) {
  std::lock_guard g(lock_);
  disable_intx();
  intx_gsi_ = gsi;
  enable_intx();
}

void PassthruDevice::enable_intx() {
  if (!intx_gsi_ || intx_on_ || msi_enabled_ || msix_enabled_) return;
  uint8_t pin = 0;
  device_config_read(0x3d, std::span(&pin, 1));
  if (pin == 0) return;  // the device has no INTx pin
  if (dev_->irq_info(VFIO_PCI_INTX_IRQ_INDEX).count == 0) return;
  try {
    if (intx_fd_ < 0) intx_fd_ = eventfd(0, EFD_CLOEXEC);
    if (intx_resample_fd_ < 0) intx_resample_fd_ = eventfd(0, EFD_CLOEXEC);
    if (intx_fd_ < 0 || intx_resample_fd_ < 0) throw std::runtime_error(strerror(errno));
    int trig[1] = {intx_fd_}, unmask[1] = {intx_resample_fd_};
    dev_->set_irq_eventfds(VFIO_PCI_INTX_IRQ_INDEX, vfio::IrqAction::Trigger, 0, trig);
    dev_->set_irq_eventfds(VFIO_PCI_INTX_IRQ_INDEX, vfio::IrqAction::Unmask, 0, unmask);
    platform_->add_irqfd(intx_fd_, *intx_gsi_, intx_resample_fd_);
    intx_on_ = true;
  } catch (const std::exception& e) {
    fmt::print(stderr, "passvm: {}: cannot wire INTx to GSI {}: {}\n", name_, *intx_gsi_, e.what());
    try {
      dev_->disable_irq(VFIO_PCI_INTX_IRQ_INDEX);
    } catch (const std::exception&) {
    }
  }
}

void PassthruDevice::disable_intx() {
  if (!intx_on_) return;
  intx_on_ = false;
  platform_->remove_irqfd(intx_fd_, *intx_gsi_);
  dev_->disable_irq(VFIO_PCI_INTX_IRQ_INDEX);
}

void PassthruDevice::watch() {
  epoll_event events[16];
  for (;;) {
    int n = epoll_wait(epoll_fd_, events, 16, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    for (int i = 0; i < n; i++) {
      uint64_t tag = events[i].data.u64;
      if (tag == kStopTag) return;
      std::lock_guard g(lock_);
      Vectors* v = (tag >> 32) == 0 ? msi_vectors_.get() : msix_vectors_.get();
      if (v) v->poll(static_cast<uint32_t>(tag));
    }
  }
}

uint64_t PassthruDevice::vectors_routed() const {
  uint64_t n = 0;
  for (auto* v : {msi_vectors_.get(), msix_vectors_.get()})
    if (v) n += v->routes_made;
  return n;
}

uint64_t PassthruDevice::masked_interrupts() const {
  uint64_t n = 0;
  for (auto* v : {msi_vectors_.get(), msix_vectors_.get()})
    if (v) n += v->masked_hits;
  return n;
}

std::string PassthruDevice::stats() const {
  const Counters& c = counters_;
  uint64_t routed = vectors_routed(), masked = masked_interrupts();
  // Per MMIO BAR: ordinary trapped accesses, then MSI-X table/PBA accesses ("bar0=0+12").
  std::string mmio;
  for (size_t i = 0; i < 6; i++)
    if (bars_[i].index >= 0 && bars_[i].kind != pci::BarKind::Io)
      mmio += fmt::format(" bar{}={}+{}", i, c.mmio[i].load(), c.msix[i].load());
  return fmt::format("config reads={} writes={}, trapped mmio (other+msix){}, pio={}, vectors routed={}, "
                     "masked-path interrupts={}, intx={}, bar maps={}, refused={}",
                     c.config_reads.load(), c.config_writes.load(), mmio.empty() ? " none" : mmio,
                     c.pio.load(), routed, masked, intx_on_ ? "wired" : "off", c.remaps.load(), c.refused.load());
}

}  // namespace passvm::passthru
