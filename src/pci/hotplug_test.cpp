#include "pci/hotplug.h"

#include <gtest/gtest.h>

#include <vector>

namespace passvm::pci {
namespace {

struct Harness {
  int gpes = 0;
  std::vector<int> ejected;
  PciHotplug hp{[this] { gpes++; }, [this](int slot) { ejected.push_back(slot); }};
  uint32_t read32(uint64_t off) {
    uint8_t b[4];
    hp.read(off, b);
    return uint32_t{b[0]} | uint32_t{b[1]} << 8 | uint32_t{b[2]} << 16 | uint32_t{b[3]} << 24;
  }
  void write32(uint64_t off, uint32_t v) {
    uint8_t b[4] = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v >> 16),
                    static_cast<uint8_t>(v >> 24)};
    hp.write(off, b);
  }
};

TEST(PciHotplug, PlugIsSeenOnceAndRaisesTheGpe) {
  Harness h;
  h.hp.plug(5);
  h.hp.plug(31);
  EXPECT_EQ(h.gpes, 2);
  EXPECT_EQ(h.read32(0), (1u << 5) | (1u << 31));
  EXPECT_EQ(h.read32(0), 0u) << "PCIU clears when read";
  EXPECT_EQ(h.read32(4), 0u);
}

TEST(PciHotplug, EjectClearsTheRequestAndReportsEachSlot) {
  Harness h;
  h.hp.unplug_request(5);
  h.hp.unplug_request(7);
  EXPECT_TRUE(h.hp.unplug_pending(5));
  EXPECT_EQ(h.read32(4), (1u << 5) | (1u << 7));
  EXPECT_EQ(h.read32(4), (1u << 5) | (1u << 7)) << "PCID stays until ejected";
  h.write32(8, 1u << 5);
  EXPECT_EQ(h.ejected, std::vector<int>{5});
  EXPECT_FALSE(h.hp.unplug_pending(5));
  EXPECT_EQ(h.read32(4), 1u << 7);
  h.write32(8, (1u << 7) | (1u << 9));  // the guest may eject a slot the host did not ask for
  EXPECT_EQ(h.ejected, (std::vector<int>{5, 7, 9}));
}

TEST(PciHotplug, WritesToStatusAndOddAccessesAreHarmless) {
  Harness h;
  h.hp.plug(3);
  h.write32(0, 0xffffffff);  // PCIU and PCID are read-only
  h.write32(4, 0xffffffff);
  EXPECT_TRUE(h.ejected.empty());
  uint8_t b[2];
  h.hp.read(11, b);  // past the end
  EXPECT_EQ(b[1], 0xff);
  uint8_t one;
  h.hp.read(0, {&one, 1});
  EXPECT_EQ(one, 1u << 3);
  EXPECT_EQ(h.read32(0), 0u);
  // A byte read clears the byte it returned, not the slots in the others.
  h.hp.plug(9);
  h.hp.read(0, {&one, 1});
  EXPECT_EQ(one, 0u);
  EXPECT_EQ(h.read32(0), 1u << 9) << "slot 9's event was lost to a read of another byte";
}

}  // namespace
}  // namespace passvm::pci
