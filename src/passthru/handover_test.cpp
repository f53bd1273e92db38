#include "passthru/handover.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "testing/fake_vfio.h"
#include "passthru/passthru_device.h"

namespace passvm::passthru {
namespace {

using testing::FakeVfioDevice;
using testing::FakePlatform;
using testing::FakeVfioState;

constexpr uint32_t kRctl = 0x100, kTctl = 0x400, kRdbal = 0x2800, kRdbah = 0x2804, kRdlen = 0x2808,
                   kRdh = 0x2810, kRdt = 0x2818, kTdbal = 0x3800, kImc = 0xd8;

// An 82574L as a previous guest left it: receive and transmit on, rings programmed, BAR0 128 KiB.
FakeVfioState running_nic(uint32_t id = 0x10d38086) {
  FakeVfioState s;
  s.set32(0x00, id);
  s.set16(0x04, 0x0006);  // memory decode and bus mastering, as the old owner had them
  s.set32(0x10, 0x0);
  s.add_region(0, 0x20000);
  auto set = [&](uint32_t off, uint32_t v) { pci::store_le(&s.bars[0][off], 4, v); };
  set(kRctl, 0x0400801a);
  set(kTctl, 0x3103f0fa);
  set(kRdbal, 0x12345000);
  set(kRdbah, 0x1);
  set(kRdlen, 4096);
  set(kRdh, 17);
  set(kRdt, 255);
  set(kTdbal, 0x2340000);
  return s;
}

// The same NIC with a power management capability at 0x40 (PMCSR at 0x44), in D0.
FakeVfioState running_nic_with_pm() {
  FakeVfioState s = running_nic();
  s.set16(0x06, 0x0010);  // status: capability list
  s.config[0x34] = 0x40;
  s.config[0x40] = 0x01;  // power management, last in the list
  s.set16(0x42, 0x0003);  // PMC: version 3
  s.pm = 0x40;
  return s;
}

uint32_t bar32(const FakeVfioState& s, uint32_t off) { return pci::load_le(&s.bars.at(0)[off], 4); }

TEST(Handover, StopsA82574LeftRunningAndReportsWhatItFound) {
  FakeVfioState s = running_nic();
  FakeVfioDevice dev(s);
  HandoverState st = quiesce_for_handover(dev);
  EXPECT_TRUE(st.known);
  EXPECT_TRUE(st.active);
  EXPECT_NE(st.found.find("ring at 0x112345000"), std::string::npos) << st.found;
  EXPECT_NE(st.found.find("transmit on"), std::string::npos) << st.found;
  for (uint32_t off : {kRctl, kTctl, kRdbal, kRdbah, kRdlen, kRdh, kRdt, kTdbal}) EXPECT_EQ(bar32(s, off), 0u) << off;
  EXPECT_EQ(bar32(s, kImc), 0xffffffffu);
  // The registers were written with decoding on and bus mastering off, and mastering stays off.
  EXPECT_EQ(pci::load_le(&s.config[0x04], 2), 0x0002u);
  ASSERT_GE(s.config_writes.size(), 2u);
}

TEST(Handover, AQuietDeviceIsKnownButNotReported) {
  FakeVfioState s = running_nic();
  pci::store_le(&s.bars[0][kRctl], 4, 0);
  pci::store_le(&s.bars[0][kTctl], 4, 0);
  FakeVfioDevice dev(s);
  HandoverState st = quiesce_for_handover(dev);
  EXPECT_TRUE(st.known);
  EXPECT_FALSE(st.active);
  EXPECT_EQ(bar32(s, kRdbal), 0u);  // the stale ring address goes all the same
}

TEST(Handover, OtherDevicesAreLeftAlone) {
  FakeVfioState s = running_nic(0x00101b36);  // an NVMe controller: its reset works
  FakeVfioDevice dev(s);
  HandoverState st = quiesce_for_handover(dev);
  EXPECT_FALSE(st.known);
  EXPECT_EQ(bar32(s, kRctl), 0x0400801au);
  EXPECT_TRUE(s.config_writes.empty());
}

TEST(Handover, ANicLeftInD3hotIsWokenBeforeItsRingsAreCleared) {
  FakeVfioState s = running_nic_with_pm();
  s.set16(0x44, 0x8103);  // D3hot, PME enabled, a PME pending
  FakeVfioDevice dev(s);
  HandoverState st = quiesce_for_handover(dev);
  EXPECT_TRUE(st.active);
  EXPECT_EQ(bar32(s, kRctl), 0u);
  EXPECT_EQ(bar32(s, kRdbal), 0u);
  EXPECT_EQ(pci::load_le(&s.config[0x44], 2), 0x0100u) << "D0, PME enable kept, PME status not written as 1";
}

TEST(Handover, ANicThatStaysInD3hotIsAnErrorNamingItsPowerState) {
  FakeVfioState s = running_nic_with_pm();
  s.set16(0x44, 0x0003);
  s.pm_stuck = true;
  FakeVfioDevice dev(s);
  try {
    quiesce_for_handover(dev);
    FAIL() << "a NIC whose registers cannot be reached was reported stopped";
  } catch (const vfio::VfioError& e) {
    EXPECT_NE(std::string(e.what()).find("left in D3"), std::string::npos) << e.what();
  }
  EXPECT_EQ(bar32(s, kRctl), 0x0400801au);
  EXPECT_EQ(pci::load_le(&s.config[0x04], 2) & 0x4, 0u) << "bus mastering off even so";
}

// A guest's driver may suspend the NIC (runtime PM puts an idle e1000e in D3hot) with its rings still
// programmed; the hand-over at release must reach them all the same.
TEST(Handover, ReleaseClearsTheRingsOfANicTheGuestLeftInD3hot) {
  FakeVfioState s = running_nic_with_pm();
  FakePlatform platform;
  {
    PassthruDevice dev(std::make_unique<FakeVfioDevice>(s), std::make_unique<testing::ForwardingPlatform>(platform),
                       PassthruOptions{.watcher_thread = false});
    pci::store_le(&s.bars[0][kRdbal], 4, 0x7000);
    pci::store_le(&s.bars[0][kRctl], 4, 0x2);
    dev.config_write(0x44, 2, 0x0003);  // the guest's driver: D3hot
    ASSERT_EQ(s.config[0x44] & 3, 3);
  }
  EXPECT_TRUE(s.closed);
  EXPECT_EQ(bar32(s, kRctl), 0u);
  EXPECT_EQ(bar32(s, kRdbal), 0u);
}

TEST(Handover, PassthroughStopsTheNicAtOpenAndAgainBeforeRelease) {
  FakeVfioState s = running_nic();
  FakePlatform platform;
  {
    PassthruDevice dev(std::make_unique<FakeVfioDevice>(s), std::make_unique<testing::ForwardingPlatform>(platform),
                       PassthruOptions{.watcher_thread = false});
    EXPECT_EQ(bar32(s, kRctl), 0u);
    EXPECT_EQ(bar32(s, kRdbal), 0u);
    // The guest's driver programs a ring and turns the NIC on.
    pci::store_le(&s.bars[0][kRdbal], 4, 0x7000);
    pci::store_le(&s.bars[0][kRctl], 4, 0x2);
    EXPECT_FALSE(s.closed);
  }
  EXPECT_TRUE(s.closed);
  EXPECT_EQ(bar32(s, kRctl), 0u);
  EXPECT_EQ(bar32(s, kRdbal), 0u);
  EXPECT_EQ(pci::load_le(&s.config[0x04], 2) & 0x4, 0u);
}

// The order of a release: DMA off first (bus mastering), then interrupts, then the NIC's rings cleared
// with decoding briefly on, and only then the device goes back to vfio-pci (which resets it). The machine
// unmaps guest RAM from the IOMMU once bus mastering is off on every device, beside the rest.
TEST(Handover, ReleaseStopsDmaBeforeTheRingsAndTheRingsBeforeClosing) {
  FakeVfioState s = running_nic();
  FakePlatform platform;
  {
    PassthruDevice dev(std::make_unique<FakeVfioDevice>(s), std::make_unique<testing::ForwardingPlatform>(platform),
                       PassthruOptions{.watcher_thread = false});
    dev.config_write(0x04, 2, 0x0006);  // the guest's driver: memory decoding and bus mastering on
    s.events.clear();
  }
  const auto& e = s.events;
  auto at = [&](const std::string& what) { return std::find(e.begin(), e.end(), what) - e.begin(); };
  ASSERT_FALSE(e.empty());
  EXPECT_EQ(e.front(), "config 0x4=0x0") << "bus mastering and decoding go off before anything else";
  EXPECT_LT(at("config 0x4=0x2"), at("bar0 0x100=0x0")) << "decoding on for the register writes, mastering off";
  EXPECT_LT(at("bar0 0x100=0x0"), at("bar0 0x2800=0x0"));
  EXPECT_EQ(e.back(), "close");
  EXPECT_EQ(e[e.size() - 2], "config 0x4=0x0") << "decoding off again before the release";
}

}  // namespace
}  // namespace passvm::passthru
