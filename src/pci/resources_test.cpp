#include <vector>

#include <gtest/gtest.h>

#include <stdexcept>

#include "memory/layout.h"
#include "testing/fake_pci_device.h"
#include "pci/root.h"

namespace passvm::pci {
namespace {

using testing::FakePciDevice;
using layout::GiB;
using layout::MiB;

bool aligned(uint64_t a, uint64_t size) { return a % size == 0; }

TEST(PciResources, BarsAreNaturallyAlignedInTheirWindows) {
  PciRoot root;
  FakePciDevice a, b;
  a.bars = {{0, BarKind::Mmio32, 0x1000, false}, {1, BarKind::Io, 0x20, false}, {2, BarKind::Mmio64, 16 * MiB, true}};
  b.bars = {{0, BarKind::Mmio32, 1 * MiB, false}, {2, BarKind::Io, 0x100, false}, {4, BarKind::Mmio32, 0x80, false}};
  root.add(3, 0, &a);
  root.add(4, 0, &b);
  root.assign_resources();

  for (FakePciDevice* d : {&a, &b}) {
    for (const BarRequest& r : d->bars) {
      ASSERT_TRUE(d->assigned.count(r.index)) << r.index;
      uint64_t at = d->assigned[r.index];
      EXPECT_TRUE(aligned(at, r.size)) << std::hex << at;
      if (r.kind == BarKind::Io) {
        EXPECT_GE(at, layout::kIoBarStart);
        EXPECT_LE(at + r.size, uint64_t{layout::kIoBarStart} + layout::kIoBarSize);
      } else {
        // Small 64-bit BARs stay in the 32-bit window.
        EXPECT_GE(at, layout::kMmio32Start);
        EXPECT_LE(at + r.size, layout::kMmio32Start + layout::kMmio32Size);
        EXPECT_TRUE(aligned(at, 4096)) << "MMIO BARs get a page of their own";
      }
    }
  }
  // No two BARs overlap.
  const auto& all = root.assignments();
  ASSERT_EQ(all.size(), 6u);
  for (size_t i = 0; i < all.size(); i++)
    for (size_t j = i + 1; j < all.size(); j++) {
      if ((all[i].kind == BarKind::Io) != (all[j].kind == BarKind::Io)) continue;
      bool disjoint = all[i].address + all[i].size <= all[j].address || all[j].address + all[j].size <= all[i].address;
      EXPECT_TRUE(disjoint) << i << " " << j;
    }
}

TEST(PciResources, Large64BitBarGoesAbove4G) {
  PciRoot root;
  FakePciDevice gpu;
  gpu.bars = {{0, BarKind::Mmio32, 16 * MiB, false}, {2, BarKind::Mmio64, 8 * GiB, true}};
  root.add(1, 0, &gpu);
  root.assign_resources();
  EXPECT_GE(gpu.assigned[2], layout::kMmio64Start);
  EXPECT_TRUE(aligned(gpu.assigned[2], 8 * GiB));
  EXPECT_LT(gpu.assigned[0], 4 * GiB);
}

TEST(PciResources, Small64BitBarsSpillAboveWhenLowWindowIsFull) {
  PciRoot root;
  FakePciDevice big, small;
  big.bars = {{0, BarKind::Mmio32, 256 * MiB, false}, {1, BarKind::Mmio32, 256 * MiB, false}};
  small.bars = {{0, BarKind::Mmio64, 1 * MiB, false}};
  root.add(1, 0, &big);
  root.add(2, 0, &small);
  root.assign_resources();
  EXPECT_GE(small.assigned[0], layout::kMmio64Start);
}

// Eight GPUs (a 16 MiB 32-bit BAR and a 32 MiB 64-bit one each) and eight NICs (a 32 MiB 64-bit BAR):
// the sixteen small 64-bit BARs alone would fill the 512 MiB low window, but they may go high and the
// GPUs' 32-bit BARs may not, so the 32-bit ones are placed first.
TEST(PciResources, Small64BitBarsLeaveTheLowWindowTo32BitOnes) {
  PciRoot root;
  std::vector<FakePciDevice> gpus(8), nics(8);
  for (int i = 0; i < 8; i++) {
    gpus[i].bars = {{0, BarKind::Mmio32, 16 * MiB, false}, {3, BarKind::Mmio64, 32 * MiB, true}};
    nics[i].bars = {{0, BarKind::Mmio64, 32 * MiB, false}};
    root.add(1 + i, 0, &gpus[i]);
    root.add(9 + i, 0, &nics[i]);
  }
  ASSERT_NO_THROW(root.assign_resources());
  for (const auto& g : gpus) EXPECT_LT(g.assigned.at(0), 1ull << 32);
  int high = 0;
  for (const auto& n : nics) high += n.assigned.at(0) >= layout::kMmio64Start;
  for (const auto& g : gpus) high += g.assigned.at(3) >= layout::kMmio64Start;
  EXPECT_GT(high, 0) << "some small 64-bit BARs spill above 4 GiB";
}

TEST(PciResources, ExhaustedWindowIsAClearError) {
  PciRoot root;
  FakePciDevice a, b;
  a.bars = {{0, BarKind::Mmio32, 256 * MiB, false}, {1, BarKind::Mmio32, 256 * MiB, false}};
  b.bars = {{0, BarKind::Mmio32, 4096, false}};
  root.add(1, 0, &a);
  root.add(2, 0, &b);
  try {
    root.assign_resources();
    FAIL() << "expected the 32-bit window to be exhausted";
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("00:02.0"), std::string::npos) << msg;
    EXPECT_NE(msg.find("32-bit MMIO window"), std::string::npos) << msg;
  }
  EXPECT_TRUE(b.assigned.empty()) << "nothing is programmed when assignment fails";
  EXPECT_TRUE(a.assigned.empty());
}

TEST(PciResources, IoWindowExhaustion) {
  PciRoot root;
  std::vector<FakePciDevice> devs(12);
  for (size_t i = 0; i < devs.size(); i++) {
    for (int bar = 0; bar < 6; bar++) devs[i].bars.push_back({bar, BarKind::Io, 256, false});
    root.add(static_cast<int>(i + 1), 0, &devs[i]);
  }
  // 12 x 6 x 256 bytes = 18 KiB > 16 KiB of I/O window.
  EXPECT_THROW(root.assign_resources(), std::runtime_error);
}

TEST(PciResources, Huge64BitBarDoesNotFit) {
  PciRoot root;
  FakePciDevice d;
  d.bars = {{0, BarKind::Mmio64, 128 * GiB, true}};
  root.add(1, 0, &d);
  EXPECT_THROW(root.assign_resources(), std::runtime_error);
}

TEST(PciResources, RejectsBadRequests) {
  for (BarRequest bad : {BarRequest{7, BarKind::Mmio32, 4096, false}, BarRequest{kRomBarIndex, BarKind::Mmio64, 4096, false},
                         BarRequest{5, BarKind::Mmio64, 4096, false},
                         BarRequest{0, BarKind::Mmio32, 3000, false}, BarRequest{0, BarKind::Io, 512, false}}) {
    PciRoot root;
    FakePciDevice d;
    d.bars = {bad};
    root.add(1, 0, &d);
    EXPECT_THROW(root.assign_resources(), std::runtime_error) << bad.index;
  }
  PciRoot root;
  FakePciDevice d;
  d.bars = {{0, BarKind::Mmio64, 4096, false}, {1, BarKind::Mmio32, 4096, false}};  // BAR1 is BAR0's upper half
  root.add(1, 0, &d);
  EXPECT_THROW(root.assign_resources(), std::runtime_error);
}

// The expansion ROM is placed in the 32-bit window like a BAR, and its register is programmed.
TEST(PciResources, ExpansionRomIsPlacedBelow4GiB) {
  PciRoot root;
  FakePciDevice d;
  d.bars = {{0, BarKind::Mmio32, 4096, false}, {kRomBarIndex, BarKind::Mmio32, 256 * 1024, false}};
  root.add(2, 0, &d);
  root.assign_resources();
  ASSERT_TRUE(d.assigned.count(kRomBarIndex));
  const uint64_t rom = d.assigned.at(kRomBarIndex);
  EXPECT_GE(rom, layout::kMmio32Start);
  EXPECT_LT(rom, layout::kMmio32Start + layout::kMmio32Size);
  EXPECT_EQ(rom % (256 * 1024), 0u);
  EXPECT_NE(rom, d.assigned.at(0));
}

TEST(PciResources, IntxPinsRouteToLayoutGsis) {
  PciRoot root;
  FakePciDevice none(1, 1, 0), inta(1, 1, 1), f0(1, 1, 0), intc(1, 1, 3), bad(1, 1, 9);
  root.add(0, 0, &none);
  root.add(3, 0, &inta);
  root.add(6, 0, &f0);
  root.add(6, 2, &intc);
  root.assign_resources();
  EXPECT_EQ(none.gsi, 0xffffffffu);
  EXPECT_EQ(inta.gsi, layout::pci_intx_gsi(3, 0));
  EXPECT_EQ(intc.gsi, layout::pci_intx_gsi(6, 2));
  EXPECT_EQ(inta.cfg.read(kCfgIntLine, 1), layout::pci_intx_gsi(3, 0));
  root.add(9, 0, &bad);
  EXPECT_THROW(root.assign_resources(), std::runtime_error);
}

}  // namespace
}  // namespace passvm::pci
