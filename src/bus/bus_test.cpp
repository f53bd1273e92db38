#include "bus/bus.h"
#include "bus/give_way.h"

#include <gtest/gtest.h>

#include <array>
#include <future>
#include <stdexcept>
#include <vector>

namespace passvm {
namespace {

struct Recorder : BusDevice {
  std::vector<uint64_t> read_offsets, write_offsets;
  uint8_t fill = 0x5a;
  void read(uint64_t offset, std::span<uint8_t> data) override {
    read_offsets.push_back(offset);
    for (auto& b : data) b = fill;
  }
  void write(uint64_t offset, std::span<const uint8_t>) override { write_offsets.push_back(offset); }
};

TEST(Bus, DispatchesWithOffsetInsideRange) {
  Bus bus("pio");
  Recorder a, b;
  bus.add(0x3f8, 8, &a);
  bus.add(0xcf8, 8, &b);
  std::array<uint8_t, 1> byte{};
  EXPECT_TRUE(bus.read(0x3fd, byte));
  EXPECT_EQ(byte[0], 0x5a);
  EXPECT_TRUE(bus.write(0xcfc, byte));
  ASSERT_EQ(a.read_offsets.size(), 1u);
  EXPECT_EQ(a.read_offsets[0], 5u);
  ASSERT_EQ(b.write_offsets.size(), 1u);
  EXPECT_EQ(b.write_offsets[0], 4u);
}

TEST(Bus, UnclaimedReadsAllOnes) {
  Bus bus("mmio");
  std::array<uint8_t, 4> data{};
  EXPECT_FALSE(bus.read(0x1000, data));
  for (auto v : data) EXPECT_EQ(v, 0xff);
}

TEST(Bus, AccessStraddlingEndIsUnclaimed) {
  Bus bus("mmio");
  Recorder a;
  bus.add(0x1000, 0x10, &a);
  std::array<uint8_t, 4> data{};
  EXPECT_FALSE(bus.read(0x100e, data));
  EXPECT_TRUE(a.read_offsets.empty());
  EXPECT_TRUE(bus.read(0x100c, data));
}

TEST(Bus, OverlapsSaysWhetherARangeIsTaken) {
  Bus bus("mmio");
  Recorder a;
  bus.add(0x1000, 0x100, &a);
  EXPECT_TRUE(bus.overlaps(0x10ff, 1));
  EXPECT_TRUE(bus.overlaps(0xf00, 0x101));
  EXPECT_TRUE(bus.overlaps(0x1080, 0x10));
  EXPECT_FALSE(bus.overlaps(0x1100, 0x100));
  EXPECT_FALSE(bus.overlaps(0xf00, 0x100));
}

TEST(Bus, OverlapsAQueryReachingTheTopOfTheAddressSpace) {
  // base + size wraps to 0 (or just above): the ranges above base still overlap.
  Bus bus("mmio");
  Recorder d;
  bus.add(0xfee00000, 0x1000, &d);
  EXPECT_TRUE(bus.overlaps(0xe00f, ~uint64_t{0} - 0xe00f + 1));
  EXPECT_TRUE(bus.overlaps(0xfe000000, ~uint64_t{0}));
  EXPECT_FALSE(bus.overlaps(0xfee01000, ~uint64_t{0} - 0xfee01000 + 1));
}

TEST(Bus, RejectsOverlapBothSides) {
  Bus bus("mmio");
  Recorder a;
  bus.add(0x1000, 0x100, &a);
  EXPECT_THROW(bus.add(0x10ff, 1, &a), std::invalid_argument);
  EXPECT_THROW(bus.add(0xf00, 0x101, &a), std::invalid_argument);
  EXPECT_NO_THROW(bus.add(0x1100, 1, &a));
  EXPECT_NO_THROW(bus.add(0xf00, 0x100, &a));
}

TEST(Bus, RemoveThenAddAgainMovesRange) {
  Bus bus("mmio");
  Recorder a;
  bus.add(0x1000, 0x100, &a);
  EXPECT_TRUE(bus.remove(0x1000));
  EXPECT_FALSE(bus.remove(0x1000));
  std::array<uint8_t, 1> byte{};
  EXPECT_FALSE(bus.read(0x1000, byte));
  bus.add(0x2000, 0x100, &a);
  EXPECT_TRUE(bus.read(0x2000, byte));
}

TEST(GiveWay, IsPerThreadAndNests) {
  EXPECT_EQ(GiveWay::current(), nullptr);
  GiveWay a, b;
  {
    GiveWay::Installed ia(a);
    EXPECT_EQ(GiveWay::current(), &a);
    {
      GiveWay::Installed ib(b);
      EXPECT_EQ(GiveWay::current(), &b);
      EXPECT_EQ(std::async(std::launch::async, [] { return GiveWay::current(); }).get(), nullptr);
    }
    EXPECT_EQ(GiveWay::current(), &a);
  }
  EXPECT_EQ(GiveWay::current(), nullptr);
  a.ask();
  EXPECT_TRUE(a.token().stop_requested());
  a.renew();
  EXPECT_FALSE(a.asked());
}

}  // namespace
}  // namespace passvm
