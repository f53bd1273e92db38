#include "passthru/passthru_device.h"

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>

#include <unistd.h>

#include <fmt/format.h>

#include "base/eprint.h"
#include "bus/give_way.h"
#include "passthru/handover.h"
#include "passthru/rom.h"

namespace passvm::passthru {
namespace {

constexpr uint32_t kIntLine = 0x3c, kHeaderType = 0x0e, kCommand = 0x04;
constexpr uint16_t kDecodeAndMaster = 0x7;  // command register: I/O space, memory space, bus master
constexpr uint32_t kBusMaster = 0x4;

uint32_t le(const std::vector<uint8_t>& v, uint32_t off, int size) { return pci::load_le(v.data() + off, size); }

bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) { return a < b + blen && b < a + alen; }

uint64_t page_size() {
  long ps = sysconf(_SC_PAGESIZE);
  return ps > 0 ? static_cast<uint64_t>(ps) : 4096;
}

}  // namespace

PassthruDevice::PassthruDevice(std::unique_ptr<vfio::Device> device, std::unique_ptr<Platform> platform,
                               PassthruOptions options)
    : dev_(std::move(device)), platform_(std::move(platform)), options_(options), name_(dev_->name()) {
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
    eprint("passvm: {}: still running after its {} reset: {}; stopped and its rings cleared before "
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
  if (caps_.msix && !msix_fits(raw, *caps_.msix)) {
    // Left in the list, the guest would enable MSI-X on vfio-pci's copy of it and wait for interrupts
    // that never come: hidden, the driver uses MSI or INTx.
    eprint("passvm: {}: MSI-X table or PBA lies outside its BAR; MSI-X is hidden from the guest\n", name_);
    caps_ = plan_capabilities(std::span(raw.data(), config_size_), true);
  }
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
  for (uint32_t o = 0x10; o < 0x34; o++)
    if (BarMapper::is_register(o)) emulate(o, 1);
  emulate(kIntLine, 1);
  if (caps_.msi) {
    msi_.emplace(*caps_.msi, static_cast<uint16_t>(le(raw, *caps_.msi + 2, 2)));
    emulate(*caps_.msi, msi_->size());
  }
  setup_msix(raw);
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

  BarMapper::AccessHandler& handler = *this;
  bars_ = std::make_unique<BarMapper>(*dev_, *platform_, name_, handler, options_.windows, options_.verbose,
                                      options_.peer_dma);
  std::vector<BarMapper::TrappedArea> msix_areas;
  if (msix_) {
    msix_areas.push_back({msix_table_bar_, {msix_table_offset_, msix_->table_bytes()}});
    msix_areas.push_back({msix_pba_bar_, {msix_pba_offset_, msix_->pba_bytes()}});
  }
  bars_->scan(msix_areas, page_size());
  bars_->set_rom(options_.rom_file.empty() ? RomBar::from_device(*dev_) : RomBar::from_file(options_.rom_file));
  irqs_ = std::make_unique<Interrupts>(*dev_, *platform_, name_, lock_, options_.watcher_thread);
}

bool PassthruDevice::msix_fits(const std::vector<uint8_t>& raw, uint32_t m) const {
  const uint32_t entries = (le(raw, m + 2, 2) & 0x7ffu) + 1, table = le(raw, m + 4, 4), pba = le(raw, m + 8, 4);
  auto fits = [&](uint32_t bir, uint64_t off, uint64_t len) {
    return bir < 6 && dev_->region_info(bir).size >= off + len;
  };
  return fits(table & 7, table & ~7u, MsixTable::table_bytes(entries)) &&
         fits(pba & 7, pba & ~7u, MsixTable::pba_bytes(entries));
}

void PassthruDevice::setup_msix(const std::vector<uint8_t>& raw) {
  if (!caps_.msix) return;
  uint32_t m = *caps_.msix;
  uint16_t ctrl = static_cast<uint16_t>(le(raw, m + 2, 2));
  uint32_t table = le(raw, m + 4, 4), pba = le(raw, m + 8, 4);
  msix_ = std::make_unique<MsixTable>((ctrl & 0x7ffu) + 1);
  msix_table_bar_ = static_cast<int>(table & 7);
  msix_pba_bar_ = static_cast<int>(pba & 7);
  msix_table_offset_ = table & ~7u;
  msix_pba_offset_ = pba & ~7u;
  for (uint32_t i = 0; i < 12; i++) emulated_[m + i] = true;
  pci::store_le(&shadow_[m + 2], 2, ctrl & 0x3fffu);  // enable and function mask clear
}

void PassthruDevice::disconnect() {
  if (irqs_) irqs_->stop_watcher();
  std::lock_guard g(lock_);
  disconnect_locked();
}

void PassthruDevice::disconnect_locked() {
  if (bars_) bars_->stop_peer_dma();
  // Stop the device first: no new DMA into guest RAM (the machine unmaps it from the IOMMU once every
  // device got this far) and no decoding while its BARs go away.
  if (dev_ && (command_ & kDecodeAndMaster)) {
    try {
      uint8_t cmd[2];
      pci::store_le(cmd, 2, static_cast<uint16_t>(command_ & ~kDecodeAndMaster));
      device_config_write(kCommand, cmd);
    } catch (const std::exception& e) {
      eprint("passvm: {}: teardown: {}\n", name_, e.what());
    }
    command_ = static_cast<uint16_t>(command_ & ~kDecodeAndMaster);
  }
  irqs_.reset();
  bars_.reset();
}

void PassthruDevice::teardown() {
  if (irqs_) irqs_->stop_watcher();
  std::lock_guard g(lock_);
  disconnect_locked();
  // A device whose reset leaves its DMA engines programmed is stopped by hand, so that its next owner
  // does not inherit our guest's rings (handover.h).
  if (dev_) {
    try {
      quiesce_for_handover(*dev_);
    } catch (const std::exception& e) {
      eprint("passvm: {}: its DMA engines could not be stopped before the release: {}. Its reset leaves them "
             "as they are, so it may still hold this guest's rings: give it to a VM (passvm clears them at "
             "open), not to a host driver, until the host is rebooted\n", name_, e.what());
    }
  }
  // No reset of our own: releasing the device makes vfio-pci reset it (and restore the config space
  // it saved at open), as for any VFIO user. A second function reset would only add its 100 ms wait.
  dev_.reset();
}

void PassthruDevice::report_reset() {
  // vfio-pci reset the device when it was opened; a second reset would only add its wait (100 ms for FLR).
  reset_method_ = dev_->reset_method();
  if (reset_method_.empty())
    eprint("passvm: {} has no function reset{}; it keeps the state it was left in\n", name_,
               dev_->no_reset_reason().empty() ? "" : " " + dev_->no_reset_reason());
  else
    eprint("passvm: {} reset ({})\n", name_, reset_method_);
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
    access_errors_.say(e.what());
  }
}

void PassthruDevice::device_config_write(uint32_t offset, std::span<const uint8_t> in) {
  if (offset + in.size() > config_size_) return;
  try {
    dev_->write(VFIO_PCI_CONFIG_REGION_INDEX, offset, in);
  } catch (const std::exception& e) {
    access_errors_.say(e.what());
  }
}

uint8_t PassthruDevice::virtual_byte(uint32_t offset) {
  if (BarMapper::is_register(offset)) return bars_->read_register(offset);
  if (msi_ && msi_->contains(offset)) return msi_->read(offset);
  return shadow_[offset];
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
  if (msi_ && msi_->per_vector_masking() && overlaps(offset, size, msi_->pending_offset(), 4))
    msi_->set_pending(irqs_->msi_pending());
  for (int i = 0; i < size; i++) {
    uint32_t o = offset + static_cast<uint32_t>(i);
    if (emulated_[o]) buf[i] = virtual_byte(o);
  }
  return pci::load_le(buf, size);
}

void PassthruDevice::config_write(uint32_t offset, int size, uint32_t value) {
  const bool valid = (size == 1 || size == 2 || size == 4) && offset % static_cast<uint32_t>(size) == 0 && offset < 4096;
  // Before the lock and before anything changes: the wait for guest RAM's DMA mapping blocks only this
  // vCPU, and may end in AccessDeferred (a pause), after which the vCPU makes this write again.
  if (valid && options_.dma_ready && offset <= kCommand && offset + static_cast<uint32_t>(size) > kCommand &&
      ((value >> (8 * (kCommand - offset))) & kBusMaster))
    value = hold_bus_master(offset, value);
  counters_.config_writes++;
  if (!valid) return;
  std::lock_guard g(lock_);
  uint8_t buf[4];
  pci::store_le(buf, size, value);
  const std::span<const uint8_t> bytes(buf, static_cast<size_t>(size));
  uint32_t end = offset + static_cast<uint32_t>(size);
  // Memory decoding going off, or the device leaving D0: the BARs leave the guest and the IOMMU first.
  // vfio-pci holds a change of the device's memory decoding until no map of its memory is in progress
  // (bar_mapper.h).
  const bool pm_written = caps_.pm && overlaps(offset, size, *caps_.pm + 4, 1);
  if ((offset <= kCommand && end > kCommand && (command_ & 2) && !(buf[kCommand - offset] & 2)) ||
      (pm_written && powered_ && (buf[*caps_.pm + 4 - offset] & 3) != 0))
    bars_->set_command(static_cast<uint16_t>(command_ & ~2u));
  bool all_device = true;
  for (uint32_t o = offset; o < end; o++) all_device &= !emulated_[o];
  if (all_device) {
    device_config_write(offset, bytes);
  } else {
    for (uint32_t o = offset; o < end; o++)
      if (!emulated_[o]) device_config_write(o, bytes.subspan(o - offset, 1));
  }
  if (overlaps(offset, size, kIntLine, 1)) shadow_[kIntLine] = buf[kIntLine - offset];
  if (overlaps(offset, size, 0x10, 0x24)) bars_->write_registers(offset, bytes);
  // A function reset the guest asks for (PCIe Device Control's Initiate FLR, or a conventional device's
  // Advanced Features control; vfio-pci carries either out) wakes the device into D0 and puts back the
  // command register: both are read again, as after a command write.
  auto asks = [&](const std::optional<uint32_t>& cap, uint32_t at, uint8_t bit) {
    return cap && overlaps(offset, size, *cap + at, 1) && (buf[*cap + at - offset] & bit);
  };
  const bool reset_asked = asks(caps_.pcie, 9, 0x80) || asks(caps_.af, 4, 0x01);
  const bool command_written = overlaps(offset, size, kCommand, 2) || reset_asked;
  if (command_written) {
    uint8_t cmd[2];
    device_config_read(kCommand, cmd);
    // All ones (no command register has them: a device gone from the bus, or a read that failed) decodes
    // and masters nothing; taken as read, the BARs would be mapped and the teardown would write them back.
    const auto read = static_cast<uint16_t>(pci::load_le(cmd, 2));
    command_ = read == 0xffff ? 0 : read;
  }
  if (command_written || pm_written) {
    read_power_state();  // on a command write too: a reset the guest asked for leaves the device in D0
    bars_->set_command(decoding_command());
  }
  if (msi_ && overlaps(offset, size, msi_->offset() + 2, msi_->size() - 2)) {
    for (uint32_t o = offset; o < end; o++)
      if (msi_->contains(o)) msi_->write(o, buf[o - offset]);
    msi_written();
  }
  if (caps_.msix && overlaps(offset, size, *caps_.msix + 3, 1)) {
    uint32_t o = *caps_.msix + 3;  // enable and function mask; the rest of the capability is read-only
    shadow_[o] = static_cast<uint8_t>((shadow_[o] & 0x3f) | (buf[o - offset] & 0xc0));
    msix_control_written();
  }
}

void PassthruDevice::read_power_state() {
  if (!caps_.pm) return;
  uint8_t pmcsr[2];
  device_config_read(*caps_.pm + 4, pmcsr);
  powered_ = (pmcsr[0] & 3) == 0;
}

uint32_t PassthruDevice::hold_bus_master(uint32_t offset, uint32_t value) {
  if (options_.dma_ready->is_open()) return value;
  auto start = std::chrono::steady_clock::now();
  const GiveWay* give_way = GiveWay::current();
  const DmaReady::Outcome outcome = options_.dma_ready->wait(give_way ? give_way->token() : std::stop_token{});
  auto waited = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  counters_.bus_master_wait_us += static_cast<uint64_t>(waited * 1000);
  if (outcome == DmaReady::Outcome::GaveWay) throw AccessDeferred{};  // to a pause of this vCPU
  const bool mapped = outcome == DmaReady::Outcome::Open;
  if (options_.verbose || !mapped)
    eprint("passvm: {}: the guest's bus master enable waited {:.1f} ms for guest RAM's DMA mapping{}\n",
               name_, waited, mapped ? "" : fmt::format(", which did not happen ({}): bus mastering stays off",
                                                        options_.dma_ready->why()));
  if (!mapped) value &= ~(uint32_t{kBusMaster} << (8 * (kCommand - offset)));
  return value;
}

void PassthruDevice::msi_written() {
  if (!irqs_->apply_msi(msi_->message())) msi_->clear_enable();  // what the guest reads is what is on: INTx
}

void PassthruDevice::msix_control_written() {
  uint8_t& hi = shadow_[*caps_.msix + 3];
  if (!irqs_->apply_msix(hi & 0x80, hi & 0x40, *msix_)) hi &= 0x7f;  // what the guest reads is what is on: INTx
}

void PassthruDevice::set_intx_gsi(uint32_t gsi) {
  std::lock_guard g(lock_);
  irqs_->set_intx_gsi(gsi);
}

// ---- BARs ----

void PassthruDevice::wait_peer_dma() {
  BarMapper* bars = nullptr;
  {
    std::lock_guard g(lock_);
    bars = bars_.get();
  }
  if (bars) bars->wait_peer_dma();  // without the lock: the worker does not need it, config accesses go on
}

void PassthruDevice::set_windows(const layout::PciWindows& windows) {
  std::lock_guard g(lock_);
  bars_->set_windows(windows);
}

std::vector<pci::BarRequest> PassthruDevice::bar_requests() const {
  std::lock_guard g(lock_);
  return bars_->requests();
}

void PassthruDevice::assign_bar(int index, uint64_t address) {
  std::lock_guard g(lock_);
  bars_->assign(index, address);
}

void PassthruDevice::count_access(int bar, uint64_t offset, uint64_t len) {
  auto i = static_cast<size_t>(bar);
  if (bars_->is_io(bar)) {
    counters_.pio++;
    return;
  }
  bool msix = msix_ && ((bar == msix_table_bar_ && overlaps(offset, len, msix_table_offset_, msix_->table_bytes())) ||
                        (bar == msix_pba_bar_ && overlaps(offset, len, msix_pba_offset_, msix_->pba_bytes())));
  (msix ? counters_.msix[i] : counters_.mmio[i])++;
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
  if (bar < 0 || bar >= 6 || !bars_->exists(bar)) return;
  count_access(bar, offset, data.size());
  for_each_part(bar, offset, data.size(), [&](Part part, uint64_t off, uint64_t n, uint64_t at) {
    std::span<uint8_t> piece = data.subspan(at, n);
    if (part == Part::Device) {
      try {
        dev_->read(static_cast<uint32_t>(bar), off, piece);
      } catch (const std::exception& e) {
        std::fill(piece.begin(), piece.end(), 0xff);
        access_errors_.say(e.what());
      }
      return;
    }
    std::lock_guard g(lock_);
    std::fill(piece.begin(), piece.end(), 0);
    if (part == Part::Table) {
      // Entries are dwords: only whole aligned dwords read back; anything else reads as zero.
      if (n % 4 == 0 && off % 4 == 0)
        for (uint64_t k = 0; k < n; k += 4) pci::store_le(&piece[k], 4, msix_->read(off - msix_table_offset_ + k, 4));
      return;
    }
    for (uint64_t k = 0; k < n; k++) {
      const uint64_t first = (off + k - msix_pba_offset_) * 8;
      for (uint32_t bit = 0; bit < 8; bit++)
        if (first + bit < msix_->size() && irqs_->msix_pending(static_cast<uint32_t>(first + bit)))
          piece[k] = static_cast<uint8_t>(piece[k] | (1u << bit));
    }
  });
}

void PassthruDevice::bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) {
  if (bar < 0 || bar >= 6 || !bars_->exists(bar)) return;
  count_access(bar, offset, data.size());
  for_each_part(bar, offset, data.size(), [&](Part part, uint64_t off, uint64_t n, uint64_t at) {
    std::span<const uint8_t> piece = data.subspan(at, n);
    if (part == Part::Device) {
      try {
        dev_->write(static_cast<uint32_t>(bar), off, piece);
      } catch (const std::exception& e) {
        access_errors_.say(e.what());
      }
      return;
    }
    // The PBA is read-only; table entries take whole aligned dwords only.
    if (part == Part::Pba || n % 4 != 0 || off % 4 != 0) return;
    std::lock_guard g(lock_);
    for (uint64_t k = 0; k < n; k += 4) {
      auto changed = msix_->write(off - msix_table_offset_ + k, 4, pci::load_le(&piece[k], 4));
      if (changed) irqs_->msix_entry_changed(*changed, *msix_);
    }
  });
}

// ---- statistics ----

uint64_t PassthruDevice::vectors_routed() const {
  std::lock_guard g(lock_);
  return irqs_->vectors_routed();
}

uint64_t PassthruDevice::masked_interrupts() const {
  std::lock_guard g(lock_);
  return irqs_->masked_interrupts();
}

uint32_t PassthruDevice::msix_host_vectors() const {
  std::lock_guard g(lock_);
  return irqs_->msix_host_vectors();
}

uint64_t PassthruDevice::refused_placements() const {
  std::lock_guard g(lock_);
  return bars_->refused();
}

std::string PassthruDevice::stats() const {
  std::lock_guard g(lock_);
  const Counters& c = counters_;
  // Per MMIO BAR: ordinary trapped accesses, then MSI-X table/PBA accesses ("bar0=0+12").
  std::string mmio;
  for (int i = 0; i < 6; i++)
    if (bars_->exists(i) && !bars_->is_io(i))
      mmio += fmt::format(" bar{}={}+{}", i, c.mmio[static_cast<size_t>(i)].load(),
                          c.msix[static_cast<size_t>(i)].load());
  std::string msix = msix_ ? fmt::format(", msi-x host vectors={}/{}", irqs_->msix_host_vectors(), msix_->size()) : "";
  std::string waited = c.bus_master_wait_us.load() == 0
                           ? std::string()
                           : fmt::format(", bus master enable waited {:.1f} ms for the DMA mapping",
                                         static_cast<double>(c.bus_master_wait_us.load()) / 1000);
  return fmt::format("config reads={} writes={}, trapped mmio (other+msix){}, pio={}, vectors routed={}{}, "
                     "masked-path interrupts={}, intx={}, interrupt warnings={}, bar maps={}, refused={}, "
                     "access errors={}{}{}",
                     c.config_reads.load(), c.config_writes.load(), mmio.empty() ? " none" : mmio, c.pio.load(),
                     irqs_->vectors_routed(), msix, irqs_->masked_interrupts(), irqs_->intx_wired() ? "wired" : "off",
                     irqs_->warnings(), bars_->remaps(), bars_->refused(), access_errors_.count(),
                     powered_ ? "" : ", out of D0", waited);
}

}  // namespace passvm::passthru
