#include "passthru/msi_capability.h"

#include <gtest/gtest.h>

namespace passvm::passthru {
namespace {

constexpr uint32_t kAt = 0x50;

void write32(MsiCapability& c, uint32_t off, uint32_t v) {
  for (uint32_t i = 0; i < 4; i++) c.write(off + i, static_cast<uint8_t>(v >> (8 * i)));
}

TEST(MsiCapability, LayoutFollowsTheCapableBits) {
  EXPECT_EQ(MsiCapability(kAt, 0x0000).size(), 10u);
  EXPECT_EQ(MsiCapability(kAt, 0x0080).size(), 14u);
  EXPECT_EQ(MsiCapability(kAt, 0x0100).size(), 20u);
  MsiCapability c(kAt, 0x0180);
  EXPECT_EQ(c.size(), 24u);
  EXPECT_EQ(c.pending_offset(), kAt + 20);
  EXPECT_FALSE(c.contains(kAt)) << "the header is the config view's";
  EXPECT_FALSE(c.contains(kAt + 1));
  EXPECT_TRUE(c.contains(kAt + 2));
  EXPECT_TRUE(c.contains(kAt + 23));
  EXPECT_FALSE(c.contains(kAt + 24));
}

TEST(MsiCapability, StartsDisabledKeepingWhatTheDeviceIsCapableOf) {
  MsiCapability c(kAt, 0x0180 | (2 << 1) | 0x71);  // capable of 4; enable bits left on by the host
  EXPECT_EQ(c.read(kAt + 2), 0x84);
  EXPECT_EQ(c.read(kAt + 3), 0x01);
  EXPECT_FALSE(c.message().enabled);
}

TEST(MsiCapability, MessageDecodesWhatTheGuestWrote) {
  MsiCapability c(kAt, 0x0180 | (2 << 1));
  write32(c, kAt + 4, 0xfee01003);  // the low two address bits are reserved
  write32(c, kAt + 8, 0x1);
  write32(c, kAt + 12, 0x4025);
  write32(c, kAt + 16, 0x5);
  c.write(kAt + 2, 0x01 | (2 << 4));
  auto m = c.message();
  EXPECT_TRUE(m.enabled);
  EXPECT_EQ(m.vectors, 4u);
  EXPECT_EQ(m.address, 0x1fee01000u);
  EXPECT_EQ(m.data, 0x4025u);
  EXPECT_EQ(m.mask, 0x5u);
  c.write(kAt + 2, 0x01 | (5 << 4));
  EXPECT_EQ(c.message().vectors, 4u) << "never more than the device is capable of";
  c.clear_enable();
  EXPECT_FALSE(c.message().enabled);
}

TEST(MsiCapability, PendingBitsAreReadOnlyToTheGuest) {
  MsiCapability c(kAt, 0x0100);  // 32-bit with masking: mask at +12, pending at +16
  write32(c, kAt + 16, 0xffffffff);
  EXPECT_EQ(c.read(kAt + 16), 0);
  c.set_pending(0x3);
  EXPECT_EQ(c.read(kAt + 16), 0x3);
  write32(c, kAt + 12, 0x2);
  EXPECT_EQ(c.message().mask, 0x2u);
}

}  // namespace
}  // namespace passvm::passthru
