#include "passthru/capabilities.h"

#include <gtest/gtest.h>

#include "pci/pci_device.h"

namespace passvm::passthru {
namespace {

// A config space with the standard list PM -> VPD -> MSI -> PCIe -> MSI-X -> EA, vendor registers in a
// gap and after the last capability, and the extended list SR-IOV(0x100) -> AER -> ReBAR -> DSN -> ARI
// with a vendor register in the gap after ReBAR.
std::vector<uint8_t> sample_config() {
  std::vector<uint8_t> c(4096, 0);
  c[0x06] = 0x10;
  c[0x34] = 0x40;
  auto cap = [&](uint32_t off, uint8_t id, uint8_t next) {
    c[off] = id;
    c[off + 1] = next;
  };
  cap(0x40, kCapPm, 0x50);
  cap(0x50, kCapVpd, 0x60);
  c[0x54] = 0xaa;  // VPD data
  c[0x5c] = 0x42;  // a vendor register between VPD (8 bytes) and MSI
  cap(0x60, kCapMsi, 0x70);
  cap(0x70, kCapPcie, 0xa0);
  cap(0xa0, kCapMsix, 0xb0);
  cap(0xb0, kCapEnhancedAllocation, 0);
  c[0xb2] = 1;     // one EA entry
  c[0xfc] = 0x77;  // a vendor register at the end, as Intel graphics keeps one
  auto ext = [&](uint32_t off, uint16_t id, uint32_t next) { pci::store_le(&c[off], 4, id | 1u << 16 | next << 20); };
  ext(0x100, kExtSriov, 0x140);
  c[0x108] = 0x55;  // SR-IOV control body
  ext(0x140, 0x01, 0x180);
  ext(0x180, kExtResizableBar, 0x1c0);
  c[0x188] = 1 << 5;  // ReBAR control: one resizable BAR, so 12 bytes in all
  c[0x1a0] = 0x66;    // a vendor register in the gap after ReBAR
  ext(0x1c0, 0x03, 0x200);
  ext(0x200, kExtAri, 0);
  c[0x204] = 0x12;  // ARI capability register
  return c;
}

// What the guest sees: the device's bytes with the plan applied.
std::vector<uint8_t> guest_view(std::vector<uint8_t> c, const CapabilityPlan& p) {
  for (auto [off, v] : p.overrides) c[off] = v;
  for (auto a : p.hidden)
    for (uint64_t i = 0; i < a.size; i++) c[a.offset + i] = 0;
  return c;
}

std::vector<uint16_t> walk_standard(const std::vector<uint8_t>& c) {
  std::vector<uint16_t> ids;
  for (uint32_t off = c[0x34]; off && ids.size() < 50; off = c[off + 1]) ids.push_back(c[off]);
  return ids;
}

std::vector<std::pair<uint32_t, uint16_t>> walk_extended(const std::vector<uint8_t>& c) {
  std::vector<std::pair<uint32_t, uint16_t>> out;
  for (uint32_t off = 0x100; off && out.size() < 50;) {
    uint32_t h = pci::load_le(&c[off], 4);
    out.push_back({off, static_cast<uint16_t>(h & 0xffff)});
    off = h >> 20;
  }
  return out;
}

TEST(Capabilities, StandardListKeepsWhatADriverMayUse) {
  auto c = sample_config();
  auto plan = plan_capabilities(c);
  EXPECT_EQ(plan.msi, 0x60u);
  EXPECT_EQ(plan.msix, 0xa0u);
  EXPECT_EQ(plan.pcie, 0x70u);
  auto g = guest_view(c, plan);
  EXPECT_EQ(walk_standard(g), (std::vector<uint16_t>{kCapPm, kCapVpd, kCapMsi, kCapPcie, kCapMsix}));
  EXPECT_EQ(g[0x54], 0xaa) << "VPD is the driver's";
  EXPECT_EQ(g[0xb0], 0) << "hidden EA header still visible by offset";
  EXPECT_EQ(g[0xb1], 0);
}

// Hiding unlinks and blanks the capability itself, never the vendor registers around it.
TEST(Capabilities, GapsBetweenCapabilitiesStayTheDevices) {
  auto c = sample_config();
  auto g = guest_view(c, plan_capabilities(c));
  EXPECT_EQ(g[0x5c], 0x42);
  EXPECT_EQ(g[0xfc], 0x77) << "a register after a hidden last capability";
  EXPECT_EQ(g[0x1a0], 0x66) << "a register after a hidden extended capability";
}

TEST(Capabilities, HiddenFirstStandardCapabilityMovesThePointer) {
  auto c = sample_config();
  c[0x34] = 0xb0;  // list starts with EA, which links to PM
  c[0xb1] = 0x40;
  c[0xa1] = 0;
  auto g = guest_view(c, plan_capabilities(c));
  EXPECT_EQ(g[0x34], 0x40);
  EXPECT_EQ(walk_standard(g).front(), kCapPm);
}

TEST(Capabilities, ExtendedListDropsSriovResizableBarAndAri) {
  auto c = sample_config();
  auto g = guest_view(c, plan_capabilities(c));
  auto ext = walk_extended(g);
  // 0x100 cannot move: it becomes a null capability pointing at the first kept one.
  ASSERT_EQ(ext.size(), 3u);
  EXPECT_EQ(ext[0], (std::pair<uint32_t, uint16_t>{0x100, 0}));
  EXPECT_EQ(ext[1], (std::pair<uint32_t, uint16_t>{0x140, 0x01}));
  EXPECT_EQ(ext[2], (std::pair<uint32_t, uint16_t>{0x1c0, 0x03}));
  EXPECT_EQ(g[0x108], 0) << "SR-IOV body must read as zero";
  EXPECT_EQ(pci::load_le(&g[0x180], 4), 0u) << "ReBAR header must read as zero";
  EXPECT_EQ(g[0x188], 0) << "ReBAR control must read as zero";
  EXPECT_EQ(pci::load_le(&g[0x200], 4), 0u) << "ARI header must read as zero";
  EXPECT_EQ(g[0x204], 0) << "ARI body must read as zero";
  EXPECT_EQ(pci::load_le(&g[0x140], 4) & 0xfffff, 0x10001u) << "kept header keeps id and version";
}

TEST(Capabilities, KeptFirstExtendedCapabilityStaysAt0x100) {
  auto c = sample_config();
  pci::store_le(&c[0x100], 4, 0x01u | 1u << 16 | 0x180u << 20);  // AER at 0x100 -> ReBAR -> DSN -> ARI
  auto ext = walk_extended(guest_view(c, plan_capabilities(c)));
  ASSERT_EQ(ext.size(), 2u);
  EXPECT_EQ(ext[0].second, 0x01);
  EXPECT_EQ(ext[1], (std::pair<uint32_t, uint16_t>{0x1c0, 0x03}));
}

TEST(Capabilities, LoopsAndBadPointersEndTheWalk) {
  auto c = sample_config();
  c[0x71] = 0x40;                                                 // PCIe points back to PM: a loop
  pci::store_le(&c[0x1c0], 4, 0x03u | 1u << 16 | 0x1c0u << 20);  // DSN points to itself
  auto plan = plan_capabilities(c);
  EXPECT_LE(plan.found.size(), 10u);
  auto g = guest_view(c, plan);
  EXPECT_EQ(walk_standard(g).size(), 4u);  // PM, VPD, MSI, PCIe, then the relinked end
}

TEST(Capabilities, ConventionalDeviceHasNoExtendedList) {
  auto c = sample_config();
  c.resize(256);
  auto plan = plan_capabilities(c);
  for (auto& cap : plan.found) EXPECT_FALSE(cap.extended);
}

TEST(Capabilities, NoCapabilityListBit) {
  auto c = sample_config();
  c[0x06] = 0;
  c.resize(256);
  auto plan = plan_capabilities(c);
  EXPECT_TRUE(plan.found.empty());
  EXPECT_FALSE(plan.msi);
}

}  // namespace
}  // namespace passvm::passthru
