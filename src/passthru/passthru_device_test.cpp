#include "passthru/passthru_device.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "bus/give_way.h"
#include "memory/layout.h"
#include "testing/fake_vfio.h"

namespace passvm::passthru {
namespace {

using testing::FakeVfioDevice;
using testing::FakePlatform;
using testing::FakeVfioState;

constexpr uint32_t kMsi = 0x40, kMsix = 0x60, kPcie = 0x70, kVpd = 0x90;
constexpr uint64_t kTable = 0x3000, kPba = 0x3800;

// A device like a small NIC: BAR0 64-bit prefetchable 16 KiB with the MSI-X table (4 vectors) and PBA in
// its last page, BAR2 256 bytes of I/O, BAR4 32-bit 4 KiB; MSI 64-bit, INTx pin A.
FakeVfioState make_state() {
  FakeVfioState s;
  s.set32(0x00, 0x10d38086);
  s.config[0x06] = 0x10;
  s.config[0x0e] = 0x80;  // multi-function on the host
  s.set32(0x10, 0x0c);
  s.set32(0x18, 0x01);
  s.set32(0x20, 0x00);
  s.set32(0x30, 0xfffe0001);  // a ROM the guest must not see
  s.config[0x3d] = 1;
  s.config[0x34] = kMsi;
  s.config[kMsi] = 0x05;
  s.config[kMsi + 1] = kMsix;
  s.set16(kMsi + 2, 0x0080 | 0x0100 | (1 << 1));  // 64-bit, per-vector masking, 2 vectors capable
  s.config[kMsix] = 0x11;
  s.config[kMsix + 1] = kPcie;
  s.set16(kMsix + 2, 3);  // 4 entries
  s.set32(kMsix + 4, static_cast<uint32_t>(kTable) | 0);
  s.set32(kMsix + 8, static_cast<uint32_t>(kPba) | 0);
  s.config[kPcie] = 0x10;
  s.config[kPcie + 1] = kVpd;
  s.config[kVpd] = 0x03;
  s.config[kVpd + 1] = 0;
  s.add_region(0, 0x4000, true);
  s.add_region(2, 0x100);
  s.add_region(4, 0x1000, true);
  return s;
}

class PassthruTest : public ::testing::Test {
 protected:
  void SetUp() override { open(); }
  void open() {
    p = &platform;
    dev = std::make_unique<PassthruDevice>(std::make_unique<FakeVfioDevice>(s),
                                           std::make_unique<testing::ForwardingPlatform>(platform),
                                           PassthruOptions{.watcher_thread = false});
  }
  uint32_t rd(uint32_t off, int size = 4) { return dev->config_read(off, size); }
  void wr(uint32_t off, uint32_t v, int size = 4) { dev->config_write(off, size, v); }
  uint32_t bar_rd(int bar, uint64_t off) {
    uint8_t b[4];
    dev->bar_read(bar, off, b);
    return pci::load_le(b, 4);
  }
  void bar_wr(int bar, uint64_t off, uint32_t v) {
    uint8_t b[4];
    pci::store_le(b, 4, v);
    dev->bar_write(bar, off, b);
  }
  void place_bars() {
    dev->assign_bar(0, layout::kMmio64Start);
    dev->assign_bar(2, layout::kIoBarStart);
    dev->assign_bar(4, layout::kMmio32Start);
  }
  void enable_msix() { wr(kMsix + 2, 0x8000, 2); }
  void program_vector(uint32_t i, uint64_t addr, uint32_t data, bool masked) {
    bar_wr(0, kTable + i * 16, static_cast<uint32_t>(addr));
    bar_wr(0, kTable + i * 16 + 4, static_cast<uint32_t>(addr >> 32));
    bar_wr(0, kTable + i * 16 + 8, data);
    bar_wr(0, kTable + i * 16 + 12, masked);
  }
  std::vector<int> last_fds(uint32_t index) {
    for (auto it = s.irq_sets.rbegin(); it != s.irq_sets.rend(); ++it)
      if (it->index == index && it->action == vfio::IrqAction::Trigger) return it->fds;
    return {};
  }
  bool irqfd_on(int fd) {
    for (auto& t : p->irqfds)
      if (std::get<0>(t) == fd) return true;
    return false;
  }

  FakeVfioState s = make_state();
  FakePlatform platform;
  FakePlatform* p = nullptr;
  std::unique_ptr<PassthruDevice> dev;
};

TEST_F(PassthruTest, ResetAtStartIsReported) {
  EXPECT_EQ(dev->reset_method(), "flr") << "reported from the reset vfio-pci did at open";
}

TEST_F(PassthruTest, BarRequestsComeFromRegionSizes) {
  auto r = dev->bar_requests();
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].index, 0);
  EXPECT_EQ(r[0].kind, pci::BarKind::Mmio64);
  EXPECT_EQ(r[0].size, 0x4000u);
  EXPECT_TRUE(r[0].prefetchable);
  EXPECT_EQ(r[1].index, 2);
  EXPECT_EQ(r[1].kind, pci::BarKind::Io);
  EXPECT_EQ(r[2].kind, pci::BarKind::Mmio32);
}

TEST_F(PassthruTest, BarSizingAndVirtualAddresses) {
  wr(0x10, 0xffffffff);
  wr(0x14, 0xffffffff);
  EXPECT_EQ(rd(0x10), 0xffffc00cu);
  EXPECT_EQ(rd(0x14), 0xffffffffu);
  wr(0x18, 0xffffffff);
  EXPECT_EQ(rd(0x18), 0xffffff01u);
  wr(0x20, 0xffffffff);
  EXPECT_EQ(rd(0x20), 0xfffff000u);
  wr(0x1c, 0xffffffff);  // unimplemented
  EXPECT_EQ(rd(0x1c), 0u);
  wr(0x30, 0xffffffff);  // ROM hidden
  EXPECT_EQ(rd(0x30), 0u);
  place_bars();
  EXPECT_EQ(rd(0x10), static_cast<uint32_t>(layout::kMmio64Start) | 0xc);
  EXPECT_EQ(rd(0x14), static_cast<uint32_t>(layout::kMmio64Start >> 32));
  // BAR writes never reach the device: vfio-pci owns the real BARs.
  for (auto [off, size] : s.config_writes) EXPECT_FALSE(off >= 0x10 && off < 0x28) << off;
}

TEST_F(PassthruTest, VirtualHeaderAndForwardedRegisters) {
  EXPECT_EQ(rd(0x00), 0x10d38086u);
  EXPECT_EQ(rd(0x0e, 1), 0u) << "multi-function bit must be cleared";
  wr(0x3c, 11, 1);
  EXPECT_EQ(rd(0x3c, 1), 11u);
  EXPECT_EQ(rd(0x3d, 1), 1u);
  EXPECT_EQ(s.config[0x3c], 0) << "interrupt line is virtual";
  wr(0x04, 0x0400, 2);  // INTx disable: forwarded
  EXPECT_EQ(pci::load_le(&s.config[0x04], 2), 0x0400u);
  // PCIe links to VPD, which the guest may use: its registers reach the device (vfio-pci guards them).
  EXPECT_EQ(rd(kPcie + 1, 1), kVpd);
  wr(kVpd + 4, 0x1234);
  EXPECT_EQ(pci::load_le(&s.config[kVpd + 4], 4), 0x1234u);
}

TEST_F(PassthruTest, DecodeMapsAndUnmapsBars) {
  place_bars();
  EXPECT_TRUE(p->slots.empty()) << "nothing is mapped while decode is off";
  wr(0x04, 0x3, 2);
  // BAR0: pages before the MSI-X page as a memory slot, the MSI-X page trapped.
  ASSERT_EQ(p->slots.size(), 2u);
  auto& s0 = p->slots.begin()->second;
  EXPECT_EQ(s0.gpa, layout::kMmio64Start);
  EXPECT_EQ(s0.size, 0x3000u);
  EXPECT_EQ(s0.hva, s.bars[0].data());
  EXPECT_TRUE(p->traps.count({false, layout::kMmio64Start + 0x3000}));
  EXPECT_EQ(p->traps[std::make_pair(false, layout::kMmio64Start + 0x3000)].first, 0x1000u);
  EXPECT_TRUE(p->traps.count({true, layout::kIoBarStart}));
  // Memory decode off: slots and MMIO traps go, the I/O BAR stays.
  wr(0x04, 0x1, 2);
  EXPECT_TRUE(p->slots.empty());
  EXPECT_FALSE(p->traps.count({false, layout::kMmio64Start + 0x3000}));
  EXPECT_TRUE(p->traps.count({true, layout::kIoBarStart}));
}

// KVM refusing to delete a BAR's memory slot: the BAR stays where it was, traps and all (not half taken
// out), a later change takes it out, and at the teardown its traps leave the bus while the pages the
// slot still points at stay mapped in passvm.
TEST_F(PassthruTest, ASlotKvmKeepsLeavesTheBarWholeWhereItWas) {
  place_bars();
  wr(0x04, 0x3, 2);
  const auto table = std::make_pair(false, layout::kMmio64Start + kTable);
  ASSERT_TRUE(p->traps.count(table));
  p->refuse_unmap = true;
  ::testing::internal::CaptureStderr();
  wr(0x04, 0x1, 2);  // memory decoding off
  std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("cannot take BAR 0 out of the guest"), std::string::npos) << said;
  EXPECT_EQ(p->slots.size(), 2u) << "both BARs' slots stay";
  EXPECT_TRUE(p->traps.count(table)) << "the MSI-X page's trap stays with its BAR";
  p->refuse_unmap = false;
  const uint64_t moved = layout::kMmio64Start + 0x100000;
  wr(0x10, static_cast<uint32_t>(moved) | 0x0c);
  wr(0x14, static_cast<uint32_t>(moved >> 32));
  wr(0x04, 0x3, 2);
  EXPECT_FALSE(p->traps.count(table)) << "taken out once KVM let go";
  EXPECT_TRUE(p->traps.count({false, moved + kTable}));
  for (auto& [id, sl] : p->slots) EXPECT_NE(sl.gpa, layout::kMmio64Start);

  p->refuse_unmap = true;
  ::testing::internal::CaptureStderr();
  dev.reset();
  ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(p->traps.empty()) << "a trap left on the bus would outlive its device";
  EXPECT_EQ(p->slots.size(), 2u);
  EXPECT_EQ(std::count(s.host_unmapped.begin(), s.host_unmapped.end(), static_cast<void*>(s.bars[0].data())), 0)
      << "BAR 0's pages were unmapped with a memory slot still on them";
  p->refuse_unmap = false;
}

// A device whose config space can no longer be read (gone from the bus) reads as all ones: its command
// register is then nothing decoded, not every bit set, so its BARs leave the guest and the teardown
// writes no reserved bits to it.
TEST_F(PassthruTest, ADeviceReadingAllOnesDecodesNothing) {
  place_bars();
  wr(0x04, 0x3, 2);
  ASSERT_EQ(p->slots.size(), 2u);
  s.on_write = [&](uint32_t region, uint64_t offset) {
    if (region == VFIO_PCI_CONFIG_REGION_INDEX && offset == 0x04) s.config_reads_fail = true;
  };
  ::testing::internal::CaptureStderr();
  wr(0x04, 0x7, 2);
  ::testing::internal::GetCapturedStderr();
  s.on_write = nullptr;
  EXPECT_TRUE(p->slots.empty()) << "BARs kept in the guest for a device that is gone";
  const size_t writes_before = s.config_writes.size();
  dev->disconnect();
  for (size_t i = writes_before; i < s.config_writes.size(); i++)
    EXPECT_NE(s.config_writes[i].first, 0x04u) << "the teardown wrote the command register of a gone device";
}

TEST_F(PassthruTest, OutOfD0TheMemoryBarsLeaveTheGuest) {
  // vfio-pci refuses the BARs of a device in D3hot and unmaps their pages: a memory slot left on them
  // would stop the VM at the guest's next touch.
  constexpr uint32_t kPm = 0xa0, kAf = 0xb0;
  s.config[kVpd + 1] = kPm;
  s.config[kPm] = 0x01;
  s.config[kPm + 1] = kAf;
  s.set16(kPm + 2, 0x0003);
  s.config[kAf] = 0x13;  // Advanced Features: FLR capable
  s.config[kAf + 2] = 6;
  s.config[kAf + 3] = 0x03;
  open();
  place_bars();
  wr(0x04, 0x3, 2);
  ASSERT_EQ(p->slots.size(), 2u);
  // Out of the guest before the device leaves D0: another vCPU must not touch a page vfio-pci took away.
  std::optional<size_t> slots_at_write;
  s.on_write = [&](uint32_t region, uint64_t offset) {
    if (region == VFIO_PCI_CONFIG_REGION_INDEX && offset == kPm + 4) slots_at_write = p->slots.size();
  };
  wr(kPm + 4, 0x0003, 2);  // D3hot
  s.on_write = nullptr;
  EXPECT_EQ(slots_at_write, 0u);
  EXPECT_TRUE(p->slots.empty());
  EXPECT_FALSE(p->traps.count({false, layout::kMmio64Start + 0x3000}));
  EXPECT_TRUE(p->traps.count({true, layout::kIoBarStart})) << "I/O goes on through the transport";
  wr(0x04, 0x3, 2);
  EXPECT_TRUE(p->slots.empty()) << "decoding turned on again in D3hot maps nothing";
  wr(kPm + 4, 0x0000, 2);  // back to D0
  EXPECT_EQ(p->slots.size(), 2u);
  // A reset the guest asked for (an FLR) leaves the device in D0 without a PM write: the next command
  // write finds it there.
  wr(kPm + 4, 0x0003, 2);
  EXPECT_TRUE(p->slots.empty());
  s.set16(kPm + 4, 0);
  wr(0x04, 0x3, 2);
  EXPECT_EQ(p->slots.size(), 2u);
  // The same reset asked for by the guest's FLR write (vfio-pci carries it out and wakes the device into
  // D0 as it resets it): the BARs come back without a further write from the guest.
  auto flr_from_d3hot = [&](uint32_t offset, uint32_t value, int size) {
    wr(kPm + 4, 0x0003, 2);
    ASSERT_TRUE(p->slots.empty());
    s.on_write = [&, offset](uint32_t region, uint64_t at) {
      if (region == VFIO_PCI_CONFIG_REGION_INDEX && at == offset) s.set16(kPm + 4, 0);
    };
    wr(offset, value, size);
    s.on_write = nullptr;
  };
  flr_from_d3hot(kPcie + 8, 0x8000, 2);  // PCIe Device Control, Initiate FLR (bit 15)
  EXPECT_EQ(p->slots.size(), 2u) << "the BARs came back after a PCIe FLR";
  flr_from_d3hot(kAf + 4, 0x01, 1);  // Advanced Features control (a conventional PCI device's FLR)
  EXPECT_EQ(p->slots.size(), 2u) << "the BARs came back after an Advanced Features FLR";
}

TEST_F(PassthruTest, MsixWhoseTableIsOutsideItsBarIsHidden) {
  s.set32(kMsix + 4, 0x8000);  // BAR0 has 16 KiB
  open();
  EXPECT_EQ(rd(kMsi + 1, 1), kPcie) << "the list skips MSI-X";
  for (uint32_t i = 0; i < 12; i++) EXPECT_EQ(rd(kMsix + i, 1), 0u) << "byte " << i;
  s.config_writes.clear();
  wr(kMsix + 2, 0x8000, 2);
  EXPECT_TRUE(s.config_writes.empty()) << "an enable reached the device's own MSI-X";
  EXPECT_EQ(rd(kMsi, 1), 0x05u) << "MSI stays";
}

TEST_F(PassthruTest, GuestMovingABarRemapsIt) {
  place_bars();
  wr(0x04, 0x2, 2);
  uint64_t moved = layout::kMmio32Start + 0x100000;
  wr(0x20, static_cast<uint32_t>(moved));
  bool old_found = false, new_found = false;
  for (auto& [id, sl] : p->slots) {
    old_found |= sl.gpa == layout::kMmio32Start;
    new_found |= sl.gpa == moved && sl.size == 0x1000;
  }
  EXPECT_FALSE(old_found);
  EXPECT_TRUE(new_found);
}

// Peer-to-peer DMA: while a BAR is in the guest, its mapped pages are in the IOMMU at its guest address,
// and follow it when the guest moves it; the trapped MSI-X page is not (the device cannot DMA into it).
TEST_F(PassthruTest, BarsAreMappedForPeerToPeerDmaWhereTheGuestPutsThem) {
  testing::FakeDmaMapper iommu;
  dev.reset();
  dev = std::make_unique<PassthruDevice>(std::make_unique<FakeVfioDevice>(s),
                                         std::make_unique<testing::ForwardingPlatform>(platform),
                                         PassthruOptions{.watcher_thread = false, .peer_dma = &iommu});
  place_bars();
  EXPECT_TRUE(iommu.maps.empty()) << "nothing before decoding is on";
  wr(0x04, 0x2, 2);
  dev->wait_peer_dma();
  ASSERT_EQ(iommu.maps.size(), 2u) << "BAR0's first three pages and BAR4; not the I/O BAR";
  EXPECT_EQ(iommu.maps[layout::kMmio64Start].first, 0x3000u);
  EXPECT_EQ(iommu.maps[layout::kMmio64Start].second, s.bars[0].data());
  EXPECT_EQ(iommu.maps[layout::kMmio32Start].second, s.bars[4].data());
  wr(0x20, static_cast<uint32_t>(layout::kMmio32Start + 0x10000));  // the guest moves BAR4
  dev->wait_peer_dma();
  EXPECT_FALSE(iommu.maps.count(layout::kMmio32Start));
  EXPECT_TRUE(iommu.maps.count(layout::kMmio32Start + 0x10000));
  wr(0x04, 0x0, 2);
  EXPECT_TRUE(iommu.maps.empty()) << "decoding off: out of the IOMMU too";
  wr(0x04, 0x2, 2);
  dev.reset();
  EXPECT_TRUE(iommu.maps.empty()) << "teardown unmaps them, queued or done";
}

// An IOMMU that will not map a BAR costs peer-to-peer DMA into it, not the guest's use of it.
TEST_F(PassthruTest, IommuRefusingABarIsAWarning) {
  testing::FakeDmaMapper iommu;
  iommu.fail_after = 0;
  dev.reset();
  dev = std::make_unique<PassthruDevice>(std::make_unique<FakeVfioDevice>(s),
                                         std::make_unique<testing::ForwardingPlatform>(platform),
                                         PassthruOptions{.watcher_thread = false, .peer_dma = &iommu});
  place_bars();
  ::testing::internal::CaptureStderr();
  wr(0x04, 0x2, 2);
  dev->wait_peer_dma();
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("the IOMMU refused BAR 0"), std::string::npos) << err;
  EXPECT_TRUE(iommu.maps.empty());
  EXPECT_EQ(p->slots.size(), 2u) << "both BARs are still in the guest";
}

// A 256-byte BAR the host lets us mmap: its page is a memory slot where the guest keeps it page aligned,
// and a trap where the guest moves it inside a page.
TEST_F(PassthruTest, SubPageBarIsMappedWhereItsPageIsWhole) {
  dev.reset();
  s.add_region(4, 0x100, true);
  s.bars[4].resize(4096);  // the host page behind it
  open();
  place_bars();
  wr(0x04, 0x2, 2);
  bool slot = false;
  for (auto& [h, sl] : p->slots) slot |= sl.gpa == layout::kMmio32Start && sl.size == 4096;
  EXPECT_TRUE(slot) << "BAR4's page is mapped";
  EXPECT_FALSE(p->traps.count({false, layout::kMmio32Start}));
  wr(0x20, static_cast<uint32_t>(layout::kMmio32Start + 0x100));  // legal for a 256-byte BAR
  EXPECT_TRUE(p->traps.count({false, layout::kMmio32Start + 0x100})) << "inside a page: trapped";
  for (auto& [h, sl] : p->slots) EXPECT_NE(sl.size, 4096u) << "no slot for it any more";
  bar_wr(4, 0x10, 0x1234);
  EXPECT_EQ(pci::load_le(&s.bars[4][0x10], 4), 0x1234u) << "trapped accesses reach the device";
  wr(0x20, static_cast<uint32_t>(layout::kMmio32Start + 0x1000));
  EXPECT_FALSE(p->traps.count({false, layout::kMmio32Start + 0x100}));
  // Page aligned, but another device's registers are in the rest of the page: mapping it would hide them.
  struct Other : BusDevice {
    void read(uint64_t, std::span<uint8_t>) override {}
    void write(uint64_t, std::span<const uint8_t>) override {}
  } other;
  p->add_trap(false, layout::kMmio32Start + 0x2800, 0x100, &other);
  wr(0x20, static_cast<uint32_t>(layout::kMmio32Start + 0x2000));
  EXPECT_TRUE(p->traps.count({false, layout::kMmio32Start + 0x2000})) << "trapped: the page is shared";
  for (auto& [h, sl] : p->slots) EXPECT_NE(sl.gpa, layout::kMmio32Start + 0x2000);
}

// Two sub-page BARs the guest packs into one page: mapping the page for the first would hide the second
// (KVM's memory slot wins over a trap), so both are trapped.
TEST_F(PassthruTest, SubPageBarsSharingAPageAreBothTrapped) {
  dev.reset();
  s.add_region(4, 0x100, true);
  s.bars[4].resize(4096);
  s.add_region(5, 0x100, true);
  s.bars[5].resize(4096);
  open();
  const uint64_t page = layout::kMmio32Start + 0x10000;
  dev->assign_bar(0, layout::kMmio64Start);
  dev->assign_bar(4, page);
  dev->assign_bar(5, page + 0x100);
  wr(0x04, 0x2, 2);
  for (auto& [h, sl] : p->slots) EXPECT_FALSE(sl.gpa <= page + 0x100 && page + 0x100 < sl.gpa + sl.size) << "hidden";
  EXPECT_TRUE(p->traps.count({false, page}));
  EXPECT_TRUE(p->traps.count({false, page + 0x100}));
  bar_wr(5, 0x10, 0x5555);
  EXPECT_EQ(pci::load_le(&s.bars[5][0x10], 4), 0x5555u) << "BAR5's registers reach BAR5";
  bar_wr(4, 0x10, 0x4444);
  EXPECT_EQ(pci::load_le(&s.bars[4][0x10], 4), 0x4444u);
  // BAR5 leaves the page: BAR4 has it to itself again and is mapped, the rest of the page held on the bus,
  // so another device's registers cannot be put where the slot would hide them.
  wr(0x24, static_cast<uint32_t>(page + 0x1000));
  bool slot = false;
  for (auto& [h, sl] : p->slots) slot |= sl.gpa == page && sl.size == 4096;
  EXPECT_TRUE(slot);
  EXPECT_FALSE(p->mmio_free(page + 0x800, 0x100)) << "the rest of BAR4's page is claimed";
  // And BAR5 coming back into it turns BAR4 into a trap again.
  wr(0x24, static_cast<uint32_t>(page + 0x100));
  for (auto& [h, sl] : p->slots) EXPECT_NE(sl.gpa, page);
  EXPECT_TRUE(p->traps.count({false, page + 0x100}));
  wr(0x04, 0, 2);
  EXPECT_TRUE(p->mmio_free(page, 0x2000)) << "decoding off: nothing left";
}

// A BAR refused because another was in its way is mapped once that one moves, in whatever order the
// two are handled.
TEST_F(PassthruTest, ABarRefusedForAnotherIsMappedOnceThatOneMoves) {
  place_bars();
  wr(0x04, 0x2, 2);
  wr(0x14, 0);
  wr(0x10, static_cast<uint32_t>(layout::kMmio32Start) | 0xc);  // BAR0 onto BAR4: refused
  bool bar0 = false;
  for (auto& [h, sl] : p->slots) bar0 |= sl.gpa == layout::kMmio32Start && sl.size == 0x3000;
  EXPECT_FALSE(bar0);
  wr(0x20, static_cast<uint32_t>(layout::kMmio32Start + 0x10000));  // BAR4 moves away
  for (auto& [h, sl] : p->slots) bar0 |= sl.gpa == layout::kMmio32Start && sl.size == 0x3000;
  EXPECT_TRUE(bar0) << "BAR0 (its pages before the MSI-X page) is mapped where the guest put it";
}

// A 64-bit BAR 5 would have its upper half past the BAR registers: the device is still usable without it.
TEST_F(PassthruTest, A64BitBar5IsLeftOut) {
  dev.reset();
  s.set32(0x24, 0x4);
  s.add_region(5, 0x1000, true);
  open();
  for (const auto& r : dev->bar_requests()) EXPECT_NE(r.index, 5);
  wr(0x24, 0xffffffff);
  EXPECT_EQ(rd(0x24), 0u) << "an unimplemented BAR reads as zero";
  place_bars();
  wr(0x04, 0x2, 2);
}

TEST_F(PassthruTest, BarOverRamOrAnotherBarIsRefused) {
  place_bars();
  wr(0x04, 0x2, 2);
  size_t before = p->slots.size();
  wr(0x20, 0x100000);  // into guest RAM
  EXPECT_EQ(p->slots.size(), before - 1);
  EXPECT_GE(dev->refused_placements(), 1u);
  wr(0x20, static_cast<uint32_t>(layout::kMmio32Start));  // back: mapped again
  EXPECT_EQ(p->slots.size(), before);
  // BAR4 onto BAR0 (both 64-bit window impossible for a 32-bit BAR: put BAR0 low instead).
  wr(0x10, static_cast<uint32_t>(layout::kMmio32Start) | 0xc);
  wr(0x14, 0);
  EXPECT_GE(dev->refused_placements(), 2u);
}

TEST_F(PassthruTest, AGuestMisplacingABarOverAndOverIsCountedNotLoggedEachTime) {
  place_bars();
  wr(0x04, 0x2, 2);
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < 100; i++) {
    wr(0x20, 0x100000);  // into guest RAM: refused
    wr(0x20, static_cast<uint32_t>(layout::kMmio32Start));
  }
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(dev->refused_placements(), 100u);
  size_t lines = static_cast<size_t>(std::count(err.begin(), err.end(), '\n'));
  EXPECT_LE(lines, 10u) << err;
  EXPECT_NE(err.find("only counted"), std::string::npos) << err;
}

TEST_F(PassthruTest, TrappedAccessesForwardOrEmulate) {
  place_bars();
  wr(0x04, 0x3, 2);
  pci::store_le(&s.bars[0][0x3400], 4, 0xcafef00d);  // a register sharing the MSI-X page
  EXPECT_EQ(bar_rd(0, 0x3400), 0xcafef00du);
  bar_wr(0, 0x3404, 0x12345678);
  EXPECT_EQ(pci::load_le(&s.bars[0][0x3404], 4), 0x12345678u);
  bar_wr(2, 0x10, 0xabcd);  // I/O BAR
  EXPECT_EQ(pci::load_le(&s.bars[2][0x10], 4), 0xabcdu);
  // The table itself never reaches the device.
  bar_wr(0, kTable, 0xfee00000);
  EXPECT_EQ(pci::load_le(&s.bars[0][kTable], 4), 0u);
  EXPECT_EQ(bar_rd(0, kTable), 0xfee00000u);
  EXPECT_EQ(bar_rd(0, kTable + 12), 1u) << "entries start masked";
  EXPECT_EQ(dev->counters().pio.load(), 1u);
  EXPECT_EQ(dev->counters().mmio[0].load(), 2u) << "only the register beside the table is an ordinary trap";
  EXPECT_EQ(dev->counters().msix[0].load(), 3u);
  EXPECT_NE(dev->stats().find("bar0=2+3"), std::string::npos) << dev->stats();
}

// An 8-byte access across the end of the table or the PBA: the bytes beyond are the device's register.
TEST_F(PassthruTest, AccessesStraddlingTableOrPbaEdgeReachBothSides) {
  place_bars();
  wr(0x04, 0x3, 2);
  constexpr uint64_t kTableEnd = kTable + 4 * 16, kPbaEnd = kPba + 8;
  pci::store_le(&s.bars[0][kTableEnd], 4, 0xdeadbeef);
  pci::store_le(&s.bars[0][kPbaEnd], 4, 0x600dcafe);
  pci::store_le(&s.bars[0][kTableEnd - 4], 4, 0xaaaaaaaa);  // the device's own copy, never used
  uint8_t b[8];
  dev->bar_read(0, kTableEnd - 4, b);
  EXPECT_EQ(pci::load_le(b, 4), 1u) << "the last entry's vector control (masked)";
  EXPECT_EQ(pci::load_le(b + 4, 4), 0xdeadbeefu);
  dev->bar_read(0, kPbaEnd - 4, b);
  EXPECT_EQ(pci::load_le(b, 4), 0u) << "nothing pending";
  EXPECT_EQ(pci::load_le(b + 4, 4), 0x600dcafeu);
  pci::store_le(b, 4, 0);            // unmask the last entry
  pci::store_le(b + 4, 4, 0x1234);   // and write the register after the table
  dev->bar_write(0, kTableEnd - 4, b);
  EXPECT_EQ(bar_rd(0, kTableEnd - 4), 0u);
  EXPECT_EQ(pci::load_le(&s.bars[0][kTableEnd], 4), 0x1234u);
  EXPECT_EQ(pci::load_le(&s.bars[0][kTableEnd - 4], 4), 0xaaaaaaaau) << "the table part never reaches the device";
}

TEST_F(PassthruTest, MsixVectorsRouteMaskAndPend) {
  place_bars();
  wr(0x04, 0x2, 2);
  enable_msix();
  EXPECT_EQ(last_fds(VFIO_PCI_MSIX_IRQ_INDEX), std::vector<int>{-1}) << "MSI-X on, no host vector wired yet";
  EXPECT_EQ(dev->msix_host_vectors(), 0u);
  EXPECT_TRUE(p->irqfds.empty()) << "all vectors start masked";
  program_vector(1, 0xfee00000, 0x41, false);
  auto fds = last_fds(VFIO_PCI_MSIX_IRQ_INDEX);
  ASSERT_EQ(fds.size(), 2u) << "re-enabled with room for vector 1 (the kernel cannot resize)";
  EXPECT_EQ(fds[0], -1);
  ASSERT_EQ(p->routes.size(), 1u);
  EXPECT_EQ(p->routes.begin()->second, (std::pair<uint64_t, uint32_t>{0xfee00000, 0x41}));
  EXPECT_TRUE(irqfd_on(fds[1]));
  // Retarget while unmasked: same route, new message.
  bar_wr(0, kTable + 16 + 8, 0x42);
  EXPECT_EQ(p->routes.begin()->second.second, 0x42u);
  // Masked: the irqfd goes; an interrupt then shows in the PBA and is delivered on unmask.
  bar_wr(0, kTable + 16 + 12, 1);
  EXPECT_FALSE(irqfd_on(fds[1]));
  EXPECT_EQ(bar_rd(0, kPba), 0u);
  uint64_t one = 1;
  ASSERT_EQ(write(fds[1], &one, sizeof one), 8);
  EXPECT_EQ(bar_rd(0, kPba), 0x2u);
  EXPECT_EQ(dev->masked_interrupts(), 1u);
  bar_wr(0, kTable + 16 + 12, 0);
  ASSERT_EQ(p->signalled.size(), 1u);
  EXPECT_EQ(p->signalled[0], (std::pair<uint64_t, uint32_t>{0xfee00000, 0x42}));
  EXPECT_EQ(bar_rd(0, kPba), 0u);
  EXPECT_TRUE(irqfd_on(fds[1]));
  // Function mask masks every vector.
  wr(kMsix + 2, 0xc000, 2);
  EXPECT_FALSE(irqfd_on(fds[1]));
  wr(kMsix + 2, 0x8000, 2);
  EXPECT_TRUE(irqfd_on(fds[1]));
  // Disable: VFIO told, routes freed.
  wr(kMsix + 2, 0, 2);
  EXPECT_EQ(s.disabled.back(), static_cast<uint32_t>(VFIO_PCI_MSIX_IRQ_INDEX));
  EXPECT_TRUE(p->routes.empty());
  EXPECT_TRUE(p->irqfds.empty());
}

// KVM's routing table is finite (4096 per VM): a guest that unmasks more vectors than it holds must not
// stop the machine, and the vector it could not route keeps its interrupts pending until it can be.
TEST_F(PassthruTest, AVectorKvmCannotRouteStaysParked) {
  place_bars();
  wr(0x04, 0x2, 2);
  enable_msix();
  p->refuse_routes = true;
  EXPECT_NO_THROW(program_vector(1, 0xfee00000, 0x41, false));
  auto fds = last_fds(VFIO_PCI_MSIX_IRQ_INDEX);
  ASSERT_EQ(fds.size(), 2u);
  EXPECT_FALSE(irqfd_on(fds[1]));
  EXPECT_TRUE(p->routes.empty());
  uint64_t one = 1;
  ASSERT_EQ(write(fds[1], &one, sizeof one), 8);
  EXPECT_EQ(bar_rd(0, kPba), 0x2u) << "the interrupt is pending, not lost";
  // Room again (another vector was freed): the next unmask routes it and delivers what was pending.
  p->refuse_routes = false;
  bar_wr(0, kTable + 16 + 12, 1);
  bar_wr(0, kTable + 16 + 12, 0);
  EXPECT_TRUE(irqfd_on(fds[1]));
  ASSERT_EQ(p->signalled.size(), 1u);
  EXPECT_EQ(p->signalled[0], (std::pair<uint64_t, uint32_t>{0xfee00000, 0x41}));
  EXPECT_EQ(bar_rd(0, kPba), 0u);
}

// A mask KVM cannot carry out (its irqfd removal fails) must not stop the machine: the guest's write is
// taken, the vector stays wired, and the next mask carries it out.
TEST_F(PassthruTest, AMaskKvmRefusesLeavesTheVectorWired) {
  place_bars();
  wr(0x04, 0x2, 2);
  enable_msix();
  program_vector(1, 0xfee00000, 0x41, false);
  auto fds = last_fds(VFIO_PCI_MSIX_IRQ_INDEX);
  ASSERT_EQ(fds.size(), 2u);
  ASSERT_TRUE(irqfd_on(fds[1]));
  p->refuse_irqfd_removal = true;
  ::testing::internal::CaptureStderr();
  EXPECT_NO_THROW(bar_wr(0, kTable + 16 + 12, 1));
  EXPECT_NO_THROW(wr(kMsix + 2, 0xc000, 2)) << "the function mask too";
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_TRUE(irqfd_on(fds[1]));
  EXPECT_NE(err.find("cannot mask MSI-X vector 1"), std::string::npos) << err;
  p->refuse_irqfd_removal = false;
  wr(kMsix + 2, 0x8000, 2);
  bar_wr(0, kTable + 16 + 12, 0);
  bar_wr(0, kTable + 16 + 12, 1);
  EXPECT_FALSE(irqfd_on(fds[1])) << "the next mask is carried out";
}

// Each kind of refusal is said once per vector: one that could not be routed before and later cannot be
// masked gets both said.
TEST_F(PassthruTest, ARouteRefusalDoesNotSilenceAMaskRefusal) {
  place_bars();
  wr(0x04, 0x2, 2);
  enable_msix();
  ::testing::internal::CaptureStderr();
  p->refuse_routes = true;
  program_vector(1, 0xfee00000, 0x41, false);
  p->refuse_routes = false;
  bar_wr(0, kTable + 16 + 12, 1);
  bar_wr(0, kTable + 16 + 12, 0);  // routed now
  p->refuse_irqfd_removal = true;
  bar_wr(0, kTable + 16 + 12, 1);
  p->refuse_irqfd_removal = false;
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("cannot route MSI-X vector 1"), std::string::npos) << err;
  EXPECT_NE(err.find("cannot mask MSI-X vector 1"), std::string::npos) << err;
}

// A guest that repeats what the host refuses (here: enabling MSI the host will not give) gets the first
// few refusals said on passvm's stderr and the rest counted: the host's logs do not fill up.
TEST_F(PassthruTest, RepeatedInterruptRefusalsAreCountedNotLoggedEachTime) {
  place_bars();
  wr(0x04, 0x2, 2);
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < 100; i++) {
    s.refuse_irqs.insert(VFIO_PCI_MSI_IRQ_INDEX);
    wr(kMsi + 2, 1, 2);
    wr(kMsi + 2, 0, 2);
  }
  std::string err = ::testing::internal::GetCapturedStderr();
  size_t lines = static_cast<size_t>(std::count(err.begin(), err.end(), '\n'));
  EXPECT_LE(lines, 10u) << err;
  EXPECT_NE(err.find("cannot enable MSI"), std::string::npos) << err;
  EXPECT_NE(err.find("only counted"), std::string::npos) << err;
  EXPECT_NE(dev->stats().find("interrupt warnings=100"), std::string::npos) << dev->stats();
}

// A guest that enables many vectors but unmasks few costs the host only those few.
TEST_F(PassthruTest, MsixHostVectorsFollowWhatTheGuestUnmasks) {
  s.set16(kMsix + 2, 63);  // 64 entries: table 1 KiB, PBA 8 bytes, both in BAR0's last page
  dev.reset();
  open();
  place_bars();
  wr(0x04, 0x2, 2);
  wr(kMsix + 2, 0xc000, 2);  // as Linux does: enable with the function masked, program, then unmask
  for (uint32_t i = 0; i < 64; i++) program_vector(i, 0xfee00000, 0x30 + i, true);
  wr(kMsix + 2, 0x8000, 2);
  EXPECT_EQ(dev->msix_host_vectors(), 0u);
  program_vector(0, 0xfee00000, 0x30, false);
  program_vector(2, 0xfee00000, 0x32, false);
  EXPECT_EQ(dev->msix_host_vectors(), 2u);
  auto fds = last_fds(VFIO_PCI_MSIX_IRQ_INDEX);
  ASSERT_EQ(fds.size(), 3u);
  EXPECT_GE(fds[0], 0);
  EXPECT_EQ(fds[1], -1) << "vector 1 is still masked: no host interrupt for it";
  EXPECT_GE(fds[2], 0);
  EXPECT_EQ(p->irqfds.size(), 2u);
  EXPECT_NE(dev->stats().find("msi-x host vectors=2/64"), std::string::npos) << dev->stats();
  // Masking again keeps the host vector (parked, so an interrupt becomes a pending bit).
  bar_wr(0, kTable + 12, 1);
  EXPECT_EQ(dev->msix_host_vectors(), 2u);
}

// A kernel with dynamic MSI-X adds one vector at a time, without switching MSI-X off and on.
TEST_F(PassthruTest, MsixVectorsAreAddedOneByOneWhenTheHostCan) {
  s.msix_noresize = false;
  dev.reset();
  open();
  place_bars();
  wr(0x04, 0x2, 2);
  enable_msix();
  size_t disables = s.disabled.size();
  program_vector(3, 0xfee00000, 0x33, false);
  ASSERT_FALSE(s.irq_sets.empty());
  EXPECT_EQ(s.irq_sets.back().start, 3u);
  ASSERT_EQ(s.irq_sets.back().fds.size(), 1u);
  EXPECT_TRUE(irqfd_on(s.irq_sets.back().fds[0]));
  EXPECT_EQ(s.disabled.size(), disables) << "MSI-X was not switched off to add the vector";
}

// The host running out of vectors is named, and the vectors already in use keep working.
TEST_F(PassthruTest, MsixShortfallIsReportedAndKeepsTheOthers) {
  place_bars();
  wr(0x04, 0x2, 2);
  enable_msix();
  s.msix_host_limit = 2;
  program_vector(0, 0xfee00000, 0x30, false);
  int fd0 = last_fds(VFIO_PCI_MSIX_IRQ_INDEX).at(0);
  ::testing::internal::CaptureStderr();
  program_vector(2, 0xfee00000, 0x32, false);
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("the host cannot supply MSI-X vector 2 (1 in use)"), std::string::npos) << err;
  EXPECT_NE(err.find("could allocate only 2"), std::string::npos) << err;
  EXPECT_EQ(dev->msix_host_vectors(), 1u);
  auto fds = last_fds(VFIO_PCI_MSIX_IRQ_INDEX);
  ASSERT_EQ(fds.size(), 1u) << "MSI-X given back with the vector it had";
  EXPECT_EQ(fds[0], fd0);
  EXPECT_TRUE(irqfd_on(fd0));
  EXPECT_EQ(p->routes.size(), 1u);
}

TEST_F(PassthruTest, AbsurdMsixEntriesAreHarmless) {
  place_bars();
  wr(0x04, 0x2, 2);
  enable_msix();
  program_vector(2, 0x1000, 0x30, false);  // not an interrupt address
  EXPECT_TRUE(p->routes.empty());
  EXPECT_TRUE(p->irqfds.empty());
  uint8_t b2[2] = {0xff, 0xff};
  dev->bar_write(0, kTable + 2, b2);  // unaligned, short: ignored
  EXPECT_EQ(bar_rd(0, kTable + 16 * 2), 0x1000u);
  EXPECT_EQ(dev->config_read(4096, 4), 0xffffffffu);
  EXPECT_EQ(dev->config_read(0x11, 4), 0xffffffffu);
  dev->config_write(4100, 4, 0);
}

TEST_F(PassthruTest, IntxWithResampleUntilMsiTakesOver) {
  dev->set_intx_gsi(19);
  auto intx = last_fds(VFIO_PCI_INTX_IRQ_INDEX);
  ASSERT_EQ(intx.size(), 1u);
  int resample = -1;
  for (auto& st : s.irq_sets)
    if (st.index == VFIO_PCI_INTX_IRQ_INDEX && st.action == vfio::IrqAction::Unmask) resample = st.fds[0];
  ASSERT_GE(resample, 0);
  EXPECT_TRUE(p->irqfds.count({intx[0], 19u, resample})) << "INTx irqfd must carry the VFIO unmask fd as resample";
  // MSI, 64-bit with per-vector masking, as the device has it; 1 of 2 vectors enabled.
  EXPECT_EQ(rd(kMsi + 2, 2) & 0x1ff, 0x182u);
  wr(kMsi + 4, 0xfee01000);
  wr(kMsi + 8, 0);
  wr(kMsi + 12, 0x4025, 2);
  wr(kMsi + 2, 1, 2);
  EXPECT_FALSE(p->irqfds.count({intx[0], 19u, resample}));
  EXPECT_NE(std::find(s.disabled.begin(), s.disabled.end(), VFIO_PCI_INTX_IRQ_INDEX), s.disabled.end());
  auto msi = last_fds(VFIO_PCI_MSI_IRQ_INDEX);
  ASSERT_EQ(msi.size(), 1u);
  ASSERT_EQ(p->routes.size(), 1u);
  EXPECT_EQ(p->routes.begin()->second, (std::pair<uint64_t, uint32_t>{0xfee01000, 0x4025}));
  EXPECT_TRUE(irqfd_on(msi[0]));
  EXPECT_EQ(s.config[kMsi + 2] & 1, 0) << "MSI control is emulated, not written to the device";
  wr(kMsi + 2, 0, 2);
  EXPECT_TRUE(p->routes.empty());
  EXPECT_EQ(last_fds(VFIO_PCI_INTX_IRQ_INDEX).size(), 1u);
  EXPECT_EQ(p->irqfds.size(), 1u) << "INTx rewired after MSI is disabled";
}

// When the host cannot supply the vectors, the guest must read Enable clear and keep a working INTx,
// not believe MSI or MSI-X is on while no interrupt can ever come.
TEST_F(PassthruTest, RefusedVectorsLeaveEnableClearAndIntxWired) {
  dev->set_intx_gsi(19);
  auto intx = last_fds(VFIO_PCI_INTX_IRQ_INDEX);
  s.refuse_irqs = {VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX};
  wr(kMsi + 4, 0xfee01000);
  wr(kMsi + 2, 1, 2);
  EXPECT_EQ(rd(kMsi + 2, 2) & 1, 0u) << "MSI enable must read back clear";
  EXPECT_TRUE(p->routes.empty());
  enable_msix();
  EXPECT_EQ(rd(kMsix + 2, 2) & 0x8000, 0u) << "MSI-X enable must read back clear";
  ASSERT_EQ(p->irqfds.size(), 1u) << "INTx is wired again";
  EXPECT_EQ(std::get<1>(*p->irqfds.begin()), 19u);
  // A later attempt that the host can serve works.
  enable_msix();
  EXPECT_EQ(rd(kMsix + 2, 2) & 0x8000, 0x8000u);
  EXPECT_EQ(last_fds(VFIO_PCI_MSIX_IRQ_INDEX).size(), 1u);
}

TEST_F(PassthruTest, MsiPerVectorMaskParksAndPends) {
  constexpr uint32_t kMask = kMsi + 16, kPending = kMsi + 20;  // 64-bit layout
  wr(kMsi + 4, 0xfee00000);
  wr(kMsi + 12, 0x4030, 2);
  wr(kMask, 0x1);                 // vector 0 masked before MSI is on
  wr(kPending, 0xffffffff);       // read-only: ignored
  EXPECT_EQ(rd(kPending), 0u);
  wr(kMsi + 2, 1 | (1 << 4), 2);  // enable, 2 vectors
  auto fds = last_fds(VFIO_PCI_MSI_IRQ_INDEX);
  ASSERT_EQ(fds.size(), 2u);
  EXPECT_FALSE(irqfd_on(fds[0])) << "masked vector parked";
  EXPECT_TRUE(irqfd_on(fds[1]));
  EXPECT_EQ(rd(kMask), 0x1u);
  uint64_t one = 1;
  ASSERT_EQ(write(fds[0], &one, sizeof one), 8);
  EXPECT_EQ(rd(kPending), 0x1u) << "an interrupt on a masked vector is pending";
  EXPECT_TRUE(p->signalled.empty());
  wr(kMask, 0x2);  // unmask 0, mask 1: the pending one is delivered, with its own data
  ASSERT_EQ(p->signalled.size(), 1u);
  EXPECT_EQ(p->signalled[0], (std::pair<uint64_t, uint32_t>{0xfee00000, 0x4030}));
  EXPECT_EQ(rd(kPending), 0u);
  EXPECT_TRUE(irqfd_on(fds[0]));
  EXPECT_FALSE(irqfd_on(fds[1]));
  EXPECT_EQ(s.config[kMask], 0) << "mask bits are emulated, not written to the device";
}

TEST_F(PassthruTest, TeardownLeavesNothingBehind) {
  place_bars();
  wr(0x04, 0x3, 2);
  dev->set_intx_gsi(19);
  enable_msix();
  program_vector(0, 0xfee00000, 0x30, false);
  ASSERT_FALSE(p->slots.empty());
  ASSERT_FALSE(p->traps.empty());
  ASSERT_FALSE(p->routes.empty());
  ASSERT_EQ(p->irqfds.size(), 1u);
  dev.reset();
  EXPECT_TRUE(p->slots.empty());
  EXPECT_TRUE(p->traps.empty());
  EXPECT_TRUE(p->routes.empty());
  EXPECT_TRUE(p->irqfds.empty());
  EXPECT_TRUE(s.closed);
  EXPECT_NE(std::find(s.disabled.begin(), s.disabled.end(), VFIO_PCI_MSIX_IRQ_INDEX), s.disabled.end());
}

TEST_F(PassthruTest, DisconnectTakesEverythingGuestFacingAndLeavesTheReset) {
  place_bars();
  wr(0x04, 0x7, 2);  // I/O, memory, bus master
  dev->set_intx_gsi(19);
  enable_msix();
  program_vector(0, 0xfee00000, 0x30, false);
  ASSERT_FALSE(p->slots.empty());
  ASSERT_EQ(p->irqfds.size(), 1u);
  dev->disconnect();
  EXPECT_TRUE(p->slots.empty());
  EXPECT_TRUE(p->traps.empty());
  EXPECT_TRUE(p->routes.empty());
  EXPECT_TRUE(p->irqfds.empty());
  EXPECT_EQ(pci::load_le(&s.config[0x04], 2) & 0x7, 0u) << "decoding and bus mastering are off on the device";
  EXPECT_FALSE(s.closed) << "the release (and vfio-pci's reset) is left to the destructor";
  dev->disconnect();  // twice is harmless
  dev.reset();
  EXPECT_TRUE(s.closed);
}

TEST_F(PassthruTest, BridgesAreRefused) {
  dev.reset();
  s = make_state();
  s.config[0x0e] = 0x01;
  EXPECT_THROW(open(), vfio::VfioError);
}

// A device that does not come back from its reset reads as all ones: say so, not "a bridge".
TEST_F(PassthruTest, DeadDeviceIsNamedAsSuch) {
  dev.reset();
  s = make_state();
  std::fill(s.config.begin(), s.config.end(), 0xff);
  try {
    open();
    ADD_FAILURE() << "no error";
  } catch (const vfio::VfioError& e) {
    EXPECT_NE(std::string(e.what()).find("reads as all ones after its flr reset"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(s.closed) << "released again";
}

TEST_F(PassthruTest, StartsWithDecodingAndBusMasterOff) {
  dev.reset();
  s = make_state();
  s.set16(0x04, 0x0407);  // left enabled by the host; INTx disable must survive
  open();
  EXPECT_EQ(pci::load_le(&s.config[0x04], 2), 0x0400u) << "the device itself is quiet";
  EXPECT_EQ(rd(0x04, 2), 0x0400u);
  place_bars();
  EXPECT_TRUE(p->slots.empty()) << "nothing is mapped before the guest enables decoding";
  wr(0x04, 0x0002, 2);
  EXPECT_FALSE(p->slots.empty());
}

TEST_F(PassthruTest, StatsNameTheCounters) {
  rd(0);
  std::string st = dev->stats();
  EXPECT_EQ(st.find("0000:00:03.0"), std::string::npos) << "the caller prefixes the name: " << st;
  EXPECT_NE(st.find("config reads=1"), std::string::npos) << st;
  EXPECT_NE(st.find("bar0=0+0"), std::string::npos) << st;
}

// The guest starts while guest RAM is pinned (dma_ready.h): its bus master enable reaches the device only
// once the mapping is complete, and never if the mapping fails. Memory decoding does not wait.
class BusMasterWaitTest : public ::testing::Test {
 protected:
  FakeVfioState s = make_state();
  FakePlatform platform;
  DmaReady ready;
  std::unique_ptr<PassthruDevice> dev = std::make_unique<PassthruDevice>(
      std::make_unique<FakeVfioDevice>(s), std::make_unique<testing::ForwardingPlatform>(platform),
      PassthruOptions{.watcher_thread = false, .dma_ready = &ready});
  uint16_t device_command() { return static_cast<uint16_t>(pci::load_le(&s.config[0x04], 2)); }
};

TEST_F(BusMasterWaitTest, BusMasterEnableWaitsForTheMapping) {
  dev->config_write(0x04, 2, 0x2);  // decoding alone: at once
  EXPECT_EQ(device_command(), 0x2);
  // A dword write of command and status, as some drivers do.
  auto enable = std::async(std::launch::async, [&] { dev->config_write(0x04, 4, 0x6); });
  EXPECT_EQ(enable.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout);
  EXPECT_EQ(device_command() & 0x4, 0) << "the device mastered the bus before guest RAM was mapped";
  ready.open();
  enable.get();
  EXPECT_EQ(device_command(), 0x6);
  EXPECT_EQ(dev->config_read(0x04, 2), 0x6u);
  EXPECT_GE(dev->counters().bus_master_wait_us.load(), 150000u);
  // Open: later writes do not wait.
  dev->config_write(0x04, 1, 0x2);
  dev->config_write(0x04, 1, 0x6);
  EXPECT_EQ(device_command(), 0x6);
}

TEST_F(BusMasterWaitTest, TheMapperCanTellThatAnEnableWaits) {
  EXPECT_FALSE(ready.wait_for_a_waiter(std::chrono::milliseconds(50))) << "nobody waits yet";
  auto enable = std::async(std::launch::async, [&] { dev->config_write(0x04, 2, 0x6); });
  EXPECT_TRUE(ready.wait_for_a_waiter(std::chrono::seconds(10)));
  EXPECT_EQ(device_command() & 0x4, 0);
  ready.open();
  enable.get();
  EXPECT_EQ(device_command() & 0x4, 0x4);
}

TEST_F(BusMasterWaitTest, AFailedMappingLeavesBusMasteringOff) {
  auto enable = std::async(std::launch::async, [&] { dev->config_write(0x04, 1, 0x6); });
  EXPECT_EQ(enable.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  ready.fail("the machine stops");
  enable.get();
  EXPECT_EQ(device_command(), 0x2) << "memory decoding on, bus mastering off";
  EXPECT_EQ(dev->config_read(0x04, 2) & 0x4, 0u);
  dev->config_write(0x04, 2, 0x6);  // no wait once failed, and still off
  EXPECT_EQ(device_command() & 0x4, 0);
}

// A pause of the vCPU ends the wait (bus/give_way.h): the write changes nothing and is deferred, and the
// vCPU makes it again after the pause.
TEST_F(BusMasterWaitTest, APauseEndsTheWaitAndTheWriteIsMadeAgain) {
  dev->config_write(0x04, 2, 0x2);
  GiveWay give_way;
  std::atomic<int> deferred{0};
  auto vcpu = std::async(std::launch::async, [&] {
    GiveWay::Installed installed(give_way);
    for (;;) {
      try {
        dev->config_write(0x04, 2, 0x6);
        return;
      } catch (const AccessDeferred&) {
        deferred++;
        give_way.renew();  // the vCPU parks, is resumed, renews its token and retries (kvm/vcpu.cpp)
      }
    }
  });
  EXPECT_TRUE(ready.wait_for_a_waiter(std::chrono::seconds(10)));
  give_way.ask();
  for (int i = 0; i < 1000 && deferred.load() == 0; i++) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(deferred.load(), 1) << "the wait did not give way to the pause";
  EXPECT_EQ(device_command(), 0x2) << "a deferred write changed the device";
  EXPECT_EQ(vcpu.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout) << "the retry waits again";
  ready.open();
  vcpu.get();
  EXPECT_EQ(device_command(), 0x6);
  EXPECT_EQ(dev->counters().config_writes.load(), 2u) << "a deferred write is counted once";
}

TEST_F(BusMasterWaitTest, WritesBesideTheCommandRegisterDoNotWait) {
  dev->config_write(0x00, 4, 0xffffffff);  // vendor/device id dword: read-only, bit 2 of byte 0 set
  dev->config_write(0x06, 2, 0x0004);      // status
  dev->config_write(0x05, 1, 0x04);        // command's high byte: bit 10 (INTx disable), not bit 2
  EXPECT_EQ(device_command() & 0x4, 0);
}

}  // namespace
}  // namespace passvm::passthru

namespace passvm::passthru {
namespace {

TEST(PassthruWatcher, MaskedInterruptIsNoticedWithoutTheGuestLooking) {
  FakeVfioState s = make_state();
  FakePlatform platform;
  auto dev = std::make_unique<PassthruDevice>(std::make_unique<FakeVfioDevice>(s),
                                              std::make_unique<testing::ForwardingPlatform>(platform));
  dev->assign_bar(0, layout::kMmio64Start);
  dev->config_write(0x04, 2, 0x2);
  dev->config_write(kMsix + 2, 2, 0x8000);
  // Vector 3 used, then masked: its host vector stays, parked.
  uint8_t b[4];
  pci::store_le(b, 4, 0xfee00000);
  dev->bar_write(0, kTable + 3 * 16, b);
  pci::store_le(b, 4, 0);
  dev->bar_write(0, kTable + 3 * 16 + 12, b);
  std::vector<int> fds = s.irq_sets.back().fds;
  ASSERT_EQ(fds.size(), 4u);
  pci::store_le(b, 4, 1);
  dev->bar_write(0, kTable + 3 * 16 + 12, b);
  uint64_t one = 1;
  ASSERT_EQ(write(fds[3], &one, sizeof one), 8);
  for (int i = 0; i < 200 && dev->masked_interrupts() == 0; i++) usleep(5000);
  EXPECT_EQ(dev->masked_interrupts(), 1u);
  uint8_t pba[4];
  dev->bar_read(0, kPba, pba);
  EXPECT_EQ(pba[0], 0x8);
  dev.reset();  // joins the watcher
  EXPECT_TRUE(s.closed);
}

}  // namespace
}  // namespace passvm::passthru
