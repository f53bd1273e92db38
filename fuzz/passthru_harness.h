// fuzz: a PassthruDevice over the in-memory VFIO device of the unit tests, driven by fuzzer operations.
//
// The device looks like a small NIC with everything the config view virtualizes: BAR0 64-bit prefetchable
// (16 KiB, mmappable), BAR2 I/O (256 bytes), BAR4 32-bit (4 KiB), an expansion ROM, MSI, MSI-X, power
// management, PCI Express, VPD and two extended capabilities (AER, and SR-IOV, which the guest must not
// see). The first two input bytes pick a variant of it (see DeviceVariant), the rest is operations (ops.h).
#pragma once

#include <cstdio>
#include <algorithm>
#include <array>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <span>

#include "fuzz/ops.h"
#include "passthru/passthru_device.h"
#include "testing/fake_vfio.h"

namespace passvm::fuzz {

inline constexpr uint32_t kPm = 0x40, kMsi = 0x50, kMsix = 0x70, kPcie = 0x80, kVpd = 0xc0;

// Bits of the input's first two bytes.
struct DeviceVariant {
  bool msi64;          // MSI with 64-bit addresses and per-vector masking, else the plain 32-bit one
  bool msix_in_bar4;   // the MSI-X table and PBA in the 32-bit BAR, else at the end of BAR0
  bool sriov_first;    // SR-IOV at 0x100 (hidden: its header becomes a null capability), else AER first
  bool rom;            // the device has an expansion ROM
  bool host_shortage;  // the host can give MSI-X only 2 vectors
  bool msix_resize;    // MSI-X vectors can be added while it is on (kernels 6.5+)
  uint32_t msix_entries;
  bool no_readonly_memory;  // KVM without read-only slots: the ROM is trapped
  bool small_bar5;          // BAR5: 128 bytes of 32-bit memory, less than a page
  DeviceVariant(uint8_t b, uint8_t b2)
      : msi64(b & 1), msix_in_bar4(b & 2), sriov_first(b & 4), rom(b & 8), host_shortage(b & 16),
        msix_resize(b & 32), msix_entries(std::array<uint32_t, 4>{4, 1, 17, 64}[b >> 6]),
        no_readonly_memory(b2 & 1), small_bar5(b2 & 2) {}
  uint64_t table_offset() const { return msix_in_bar4 ? 0 : 0x3000; }
  uint64_t pba_offset() const { return msix_in_bar4 ? 0x800 : 0x3800; }
  int msix_bar() const { return msix_in_bar4 ? 4 : 0; }
};

inline testing::FakeVfioState make_device(const DeviceVariant& v) {
  testing::FakeVfioState s;
  s.set32(0x00, 0x10d38086);
  s.set16(0x04, 0x0007);  // vfio-pci's open left decoding and bus mastering on
  s.config[0x06] = 0x10;  // capability list
  s.config[0x0e] = 0x80;  // multi-function on the host
  s.set32(0x10, 0x0c);    // 64-bit prefetchable
  s.set32(0x18, 0x01);    // I/O
  s.set32(0x20, 0x00);    // 32-bit
  s.config[0x3d] = 1;     // INTx pin A
  s.config[0x34] = kPm;
  s.config[kPm] = 0x01;
  s.config[kPm + 1] = kMsi;
  s.set16(kPm + 2, 0x0003);
  s.config[kMsi] = 0x05;
  s.config[kMsi + 1] = kMsix;
  s.set16(kMsi + 2, v.msi64 ? 0x0180 | (2 << 1) : 0);  // 64-bit, per-vector masking, 4 vectors capable
  s.config[kMsix] = 0x11;
  s.config[kMsix + 1] = kPcie;
  s.set16(kMsix + 2, v.msix_entries - 1);
  s.set32(kMsix + 4, static_cast<uint32_t>(v.table_offset()) | static_cast<uint32_t>(v.msix_bar()));
  s.set32(kMsix + 8, static_cast<uint32_t>(v.pba_offset()) | static_cast<uint32_t>(v.msix_bar()));
  s.config[kPcie] = 0x10;
  s.config[kPcie + 1] = kVpd;
  s.set16(kPcie + 2, 0x0002);
  s.config[kVpd] = 0x03;
  s.config[kVpd + 1] = 0;
  // Extended capabilities: id | version << 16 | next << 20.
  constexpr uint32_t kAer = 0x0001, kSriov = 0x0010;
  if (v.sriov_first) {
    s.set32(0x100, kSriov | 1u << 16 | 0x140u << 20);
    s.set32(0x140, kAer | 2u << 16);
  } else {
    s.set32(0x100, kAer | 2u << 16 | 0x148u << 20);
    s.set32(0x148, kSriov | 1u << 16);
  }
  s.add_region(VFIO_PCI_BAR0_REGION_INDEX, 0x4000, true);
  s.add_region(VFIO_PCI_BAR2_REGION_INDEX, 0x100);
  s.add_region(VFIO_PCI_BAR4_REGION_INDEX, 0x1000, true);
  if (v.small_bar5) s.add_region(VFIO_PCI_BAR5_REGION_INDEX, 0x80, true);
  if (v.rom) {
    s.add_region(VFIO_PCI_ROM_REGION_INDEX, 0x2000, false, false);
    s.bars[VFIO_PCI_ROM_REGION_INDEX][0] = 0x55;
    s.bars[VFIO_PCI_ROM_REGION_INDEX][1] = 0xaa;
  }
  s.irq_counts[VFIO_PCI_MSI_IRQ_INDEX] = 4;
  s.irq_counts[VFIO_PCI_MSIX_IRQ_INDEX] = v.msix_entries;
  s.msix_noresize = !v.msix_resize;
  if (v.host_shortage) s.msix_host_limit = 2;
  return s;
}

class PassthruHarness {
 public:
  // Takes the variant from the first two bytes of `input` and leaves the operations in it.
  explicit PassthruHarness(std::span<const uint8_t>& input)
      : v_(input.empty() ? 0 : input[0], input.size() < 2 ? 0 : input[1]), s_(make_device(v_)) {
    input = input.subspan(std::min<size_t>(input.size(), 2));
    auto platform = std::make_unique<testing::FakePlatform>();
    platform_ = platform.get();
    platform_->refuse_readonly = v_.no_readonly_memory;
    dev_ = std::make_unique<passthru::PassthruDevice>(std::make_unique<testing::FakeVfioDevice>(s_),
                                                      std::move(platform),
                                                      passthru::PassthruOptions{.watcher_thread = false});
    writes_seen_ = s_.config_writes.size();
  }

  // Config space as the guest's CF8/CFC or ECAM accesses reach it: any offset, any size, any value.
  void config_op(const Op& op) {
    const int size = access_size(op.size);
    const uint32_t offset = op.offset % 0x1100u;  // now and then past the end of config space
    switch (op.kind % 10) {
      case 0:
        if (size == 4 && offset % 4 == 0 && offset < 0x1000)
          check_split_reads(offset, dev_->config_read(offset, 4));
        else
          dev_->config_read(offset, size);
        break;
      case 1: dev_->config_write(offset, size, op.value); break;
      case 2: {  // firmware's BAR sizing: all ones, read the size back, then an address
        const uint32_t reg = op.value % 7 == 6 ? 0x30 : 0x10 + 4 * (op.value % 7);
        dev_->config_write(reg, 4, 0xffffffff);
        dev_->config_read(reg, 4);
        dev_->config_write(reg, 4, static_cast<uint32_t>(op.wide));
        dev_->config_read(reg, 4);
        break;
      }
      case 3: dev_->config_write(0x04, 2, op.value); break;  // command: decoding and bus mastering
      case 4: assign(op); break;
      case 5: dev_->config_write(kMsi + offset % 24, size, op.value); break;
      case 6: dev_->config_write(kMsix + 2 + offset % 2, op.offset & 0x100 ? 1 : 2, op.value); break;
      case 7: dev_->config_write(0x40 + offset % 0xc0, size, op.value); break;
      case 8: dev_->config_write(0x100 + offset % 0x100, size, op.value); break;
      default:
        dev_->set_intx_gsi(op.value % 64);
        (void)dev_->stats();
        break;
    }
    check();
  }

  // A trapped access of the guest to a BAR (the MSI-X table and PBA are trapped even in a mapped BAR),
  // at an offset near the table, the PBA or anywhere in the BAR, of 0 to 8 bytes.
  void bar_op(const Op& op) {
    const int bar = op.size % 8 == 7 ? v_.msix_bar() : op.size % 8;  // 6 and 7: no such BAR
    uint64_t anchor = 0;
    switch ((op.size >> 3) % 4) {
      case 0: anchor = v_.table_offset(); break;
      case 1: anchor = v_.pba_offset(); break;
      case 2: anchor = v_.table_offset() + uint64_t{v_.msix_entries} * 16; break;  // the table's end
      default: break;
    }
    const uint64_t offset = (anchor + static_cast<int16_t>(op.offset)) % 0x4000;
    uint8_t data[8] = {};
    pci::store_le(data, 4, op.value);
    pci::store_le(data + 4, 4, static_cast<uint32_t>(op.wide));
    static constexpr size_t kLengths[8] = {4, 4, 8, 1, 2, 0, 3, 7};
    const size_t n = kLengths[op.size >> 5];
    if (op.kind & 1)
      dev_->bar_write(bar, offset, std::span<const uint8_t>(data, n));
    else
      dev_->bar_read(bar, offset, std::span<uint8_t>(data, n));
    check();
  }

  // A guest access that reaches one of the traps the device registered (a BAR's trapped pages, an I/O
  // BAR, a ROM without read-only memory), as the bus delivers it: wholly inside the trapped range.
  void trapped_op(const Op& op) {
    auto& traps = platform_->traps;
    if (traps.empty()) return bar_op(op);
    auto it = std::next(traps.begin(), static_cast<long>(op.offset % traps.size()));
    const uint64_t range = it->second.first;
    static constexpr size_t kLengths[4] = {4, 8, 2, 1};
    const size_t n = kLengths[op.size % 4];
    if (range < n) return;
    const uint64_t offset = op.wide % (range - n + 1);
    uint8_t data[8] = {};
    pci::store_le(data, 4, op.value);
    if (op.kind & 1)
      it->second.second->write(offset, std::span<const uint8_t>(data, n));
    else
      it->second.second->read(offset, std::span<uint8_t>(data, n));
    check();
  }

 private:
  // The root complex placing a BAR (or the ROM) as firmware would: naturally aligned, in its window.
  void assign(const Op& op) {
    auto requests = dev_->bar_requests();
    if (requests.empty()) return;
    const pci::BarRequest& r = requests[op.value % requests.size()];
    const layout::PciWindows w;
    const layout::Window& win = r.kind == pci::BarKind::Io       ? w.io
                                : r.kind == pci::BarKind::Mmio64 ? w.mmio64
                                                                 : w.mmio32;
    const uint64_t slots = win.size / r.size;
    dev_->assign_bar(r.index, win.start + (slots ? op.wide % slots : 0) * r.size);
  }

  // Nothing here changes on a read, so however a driver splits a dword it must see the same value: bytes
  // and words are pieced together from the device's registers and passvm's virtual ones alike.
  void check_split_reads(uint32_t offset, uint32_t dword) {
    uint32_t bytes = 0, words = 0;
    for (uint32_t i = 0; i < 4; i++) bytes |= dev_->config_read(offset + i, 1) << (8 * i);
    for (uint32_t i = 0; i < 4; i += 2) words |= dev_->config_read(offset + i, 2) << (8 * i);
    if (bytes != dword || words != dword) {
      std::fprintf(stderr, "config %#x reads %#x as a dword, %#x as bytes, %#x as words\n", offset, dword, bytes,
                   words);
      std::abort();
    }
  }

  // The BAR and ROM registers are vfio-pci's and the guest's view of them passvm's: a guest write must
  // never reach the device's own.
  void check() {
    for (; writes_seen_ < s_.config_writes.size(); writes_seen_++) {
      auto [off, size] = s_.config_writes[writes_seen_];
      for (uint32_t o = off; o < off + size; o++)
        if ((o >= 0x10 && o < 0x28) || (o >= 0x30 && o < 0x34)) {
          std::fprintf(stderr, "config write of %u bytes at %#x reached the device's BAR registers\n", size, off);
          std::abort();
        }
    }
  }

  DeviceVariant v_;
  testing::FakeVfioState s_;  // before dev_: the device's transport points into it
  testing::FakePlatform* platform_ = nullptr;  // owned by dev_
  std::unique_ptr<passthru::PassthruDevice> dev_;
  size_t writes_seen_ = 0;
};

// Runs a whole input: operations of a kind below config_below are config accesses, from trapped_from on
// accesses through the traps, the others direct trapped BAR accesses.
inline void run_passthru(std::span<const uint8_t> input, uint8_t config_below, uint8_t trapped_from) {
  PassthruHarness h(input);
  OpReader ops(input);
  while (auto op = ops.next()) {
    if (op->kind < config_below)
      h.config_op(*op);
    else if (op->kind >= trapped_from)
      h.trapped_op(*op);
    else
      h.bar_op(*op);
  }
}

}  // namespace passvm::fuzz
