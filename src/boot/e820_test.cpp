#include "boot/e820.h"

#include <gtest/gtest.h>

#include "memory/layout.h"

namespace passvm::boot {
namespace {

using layout::GiB;
using layout::MiB;

TEST(E820, SmallGuest) {
  GuestMemory mem(64 * MiB, false);
  auto map = build_e820(mem);
  std::vector<E820Entry> want = {
      {0, 0x9fc00, E820Type::Ram},
      {0x9fc00, 0x100000 - 0x9fc00, E820Type::Reserved},
      {MiB, 63 * MiB, E820Type::Ram},
      {layout::kEcamStart, layout::kEcamSize, E820Type::Reserved},
  };
  EXPECT_EQ(map, want);
}

TEST(E820, GuestAboveFourGiBSplitsAroundTheHole) {
  GuestMemory mem(5 * GiB, false);  // sparse memfd: costs nothing until touched
  auto map = build_e820(mem);
  ASSERT_EQ(map.size(), 5u);
  EXPECT_EQ(map[2], (E820Entry{MiB, layout::kLowRamMax - MiB, E820Type::Ram}));
  EXPECT_EQ(map[3], (E820Entry{layout::kEcamStart, layout::kEcamSize, E820Type::Reserved}));
  EXPECT_EQ(map[4], (E820Entry{layout::kHighRamStart, 2 * GiB, E820Type::Ram}));
  uint64_t ram = 0;
  for (size_t i = 0; i < map.size(); i++) {
    if (map[i].type == E820Type::Ram) ram += map[i].size;
    if (i > 0) {
      EXPECT_GE(map[i].addr, map[i - 1].addr + map[i - 1].size) << "entries overlap or are unsorted";
    }
  }
  // Everything but the legacy hole below 1 MiB is usable.
  EXPECT_EQ(ram, 5 * GiB - (MiB - 0x9fc00));
}

TEST(E820, DescribeNamesTypes) {
  GuestMemory mem(16 * MiB, false);
  std::string text = describe_e820(build_e820(mem));
  EXPECT_NE(text.find("[mem 0x00000000e0000000-0x00000000e00fffff] reserved"), std::string::npos) << text;
  EXPECT_NE(text.find("[mem 0x0000000000100000-0x0000000000ffffff] usable"), std::string::npos) << text;
}

}  // namespace
}  // namespace passvm::boot
