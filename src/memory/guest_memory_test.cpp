#include "memory/guest_memory.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

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

uint64_t allocated_bytes(const GuestMemory& mem) {
  struct stat st {};
  EXPECT_EQ(fstat(mem.fd(), &st), 0);
  return static_cast<uint64_t>(st.st_blocks) * 512;
}

// Populating allocates every page of the memfd, in parallel, without changing a byte.
TEST(GuestMemory, PopulateAllocatesEveryPageAndKeepsContents) {
  const uint64_t size = 200 * layout::MiB;  // not a multiple of the 64 MiB unit of work
  GuestMemory mem(size, false);
  std::array<uint8_t, 4> mark{0xde, 0xad, 0xbe, 0xef};
  mem.write(size - 4, mark);
  EXPECT_LT(allocated_bytes(mem), size / 2) << "pages are allocated on first touch";
  EXPECT_EQ(mem.populate(3), 3u);
  EXPECT_EQ(allocated_bytes(mem), size);
  std::array<uint8_t, 4> back{};
  mem.read(size - 4, back);
  EXPECT_EQ(back, mark);
  mem.read(100 * layout::MiB, back);
  EXPECT_EQ(back, (std::array<uint8_t, 4>{}));
  EXPECT_EQ(GuestMemory(16 * layout::MiB, false).populate(8), 1u) << "no more threads than units of work";
}

TEST(GuestMemory, RejectsTooSmall) { EXPECT_THROW(GuestMemory(1 * layout::MiB, false), std::runtime_error); }

}  // namespace
}  // namespace passvm
