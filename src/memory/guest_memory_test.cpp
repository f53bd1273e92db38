#include "memory/guest_memory.h"

#include <gtest/gtest.h>

#include <array>
#include <stdexcept>

#include "memory/layout.h"

namespace passvm {
namespace {

TEST(GuestMemory, SmallGuestIsOneLowRegion) {
  GuestMemory mem(64 * layout::MiB, false);
  ASSERT_EQ(mem.regions().size(), 1u);
  EXPECT_EQ(mem.regions()[0].gpa, 0u);
  EXPECT_EQ(mem.regions()[0].size, 64 * layout::MiB);
}

TEST(GuestMemory, RangeChecksRejectOutsideRam) {
  GuestMemory mem(16 * layout::MiB, false);
  std::array<uint8_t, 8> buf{1, 2, 3, 4, 5, 6, 7, 8};
  mem.write(16 * layout::MiB - 8, buf);
  std::array<uint8_t, 8> back{};
  mem.read(16 * layout::MiB - 8, back);
  EXPECT_EQ(buf, back);
  EXPECT_THROW(mem.write(16 * layout::MiB - 4, buf), std::out_of_range);
  EXPECT_THROW(mem.read(~0ull - 2, back), std::out_of_range);
  EXPECT_EQ(mem.host_address(16 * layout::MiB, 1), nullptr);
}

TEST(GuestMemory, RejectsTooSmall) { EXPECT_THROW(GuestMemory(1 * layout::MiB, false), std::runtime_error); }

}  // namespace
}  // namespace passvm
