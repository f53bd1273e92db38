#include "pci/host_bridge.h"

#include <gtest/gtest.h>

#include "pci/root.h"

namespace passvm::pci {
namespace {

TEST(HostBridge, IdentifiesAsHostBridge) {
  HostBridge hb;
  EXPECT_EQ(hb.config_read(kCfgVendorId, 2), kHostBridgeVendor);
  EXPECT_EQ(hb.config_read(kCfgDeviceId, 2), kHostBridgeDevice);
  EXPECT_EQ(hb.config_read(0x08, 4) >> 8, 0x060000u);
  EXPECT_EQ(hb.config_read(kCfgHeaderType, 1), 0u);
  EXPECT_EQ(hb.config_read(kCfgIntPin, 1), 0u);
  EXPECT_TRUE(hb.bar_requests().empty());
  // Capability list leads to a PCI Express capability and ends.
  ASSERT_TRUE(hb.config_read(kCfgStatus, 2) & kStatusCapList);
  uint32_t cap = hb.config_read(kCfgCapPtr, 1);
  EXPECT_EQ(hb.config_read(cap, 1), 0x10u);
  EXPECT_EQ(hb.config_read(cap + 1, 1), 0u);
}

TEST(HostBridge, ReadOnlyButForUsualBits) {
  HostBridge hb;
  hb.config_write(kCfgVendorId, 4, 0xffffffff);
  EXPECT_EQ(hb.config_read(kCfgVendorId, 2), kHostBridgeVendor);
  hb.config_write(kCfgBar0, 4, 0xffffffff);
  EXPECT_EQ(hb.config_read(kCfgBar0, 4), 0u) << "no BARs: sizing reads back zero";
  hb.config_write(kCfgCommand, 2, 0xffff);
  EXPECT_EQ(hb.config_read(kCfgCommand, 2), 0x0547u);
  hb.config_write(kCfgCacheLine, 1, 0x10);
  EXPECT_EQ(hb.config_read(kCfgCacheLine, 1), 0x10u);
  hb.config_write(kCfgIntLine, 1, 0x0b);
  EXPECT_EQ(hb.config_read(kCfgIntLine, 1), 0x0bu);
  hb.config_write(kCfgStatus, 2, 0xffff);  // write-one-to-clear must not clear the capability bit
  EXPECT_EQ(hb.config_read(kCfgStatus, 2), kStatusCapList);
  hb.config_write(kCfgClassCode, 1, 0x55);
  EXPECT_EQ(hb.config_read(kCfgClassCode, 1), 0u);
}

TEST(HostBridge, VisibleAtZeroThroughTheRoot) {
  PciRoot root;
  HostBridge hb;
  root.add(0, 0, &hb);
  EXPECT_EQ(root.config_read(0, 0, 0, 0, 4), uint32_t{kHostBridgeDevice} << 16 | kHostBridgeVendor);
  EXPECT_EQ(root.config_read(0, 0, 0, 0x100, 4), 0u) << "extended space present but empty";
}

}  // namespace
}  // namespace passvm::pci
