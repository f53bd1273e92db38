#include "passthru/bar_layout.h"

#include <gtest/gtest.h>

namespace passvm::passthru {
namespace {

using vfio::Area;
using Areas = std::vector<Area>;
constexpr uint64_t kPage = 0x1000;

vfio::RegionInfo region(uint64_t size, bool mmap = true) {
  vfio::RegionInfo r;
  r.size = size;
  r.readable = r.writable = true;
  r.mmappable = mmap;
  return r;
}

TEST(BarLayout, WholeBarMappedWithoutMsix) {
  auto l = plan_bar(region(0x4000), std::nullopt, std::nullopt, kPage);
  EXPECT_EQ(l.mapped, (Areas{{0, 0x4000}}));
  EXPECT_TRUE(l.trapped.empty());
}

TEST(BarLayout, PageAlignedTableAndPbaCarvedOut) {
  auto l = plan_bar(region(0x8000), Area{0x2000, 0x100}, Area{0x6000, 8}, kPage);
  EXPECT_EQ(l.mapped, (Areas{{0, 0x2000}, {0x3000, 0x3000}, {0x7000, 0x1000}}));
  EXPECT_EQ(l.trapped, (Areas{{0x2000, 0x1000}, {0x6000, 0x1000}}));
}

TEST(BarLayout, UnalignedTableTrapsItsWholePage) {
  auto l = plan_bar(region(0x4000), Area{0x1800, 0x200}, Area{0x1a00, 8}, kPage);
  EXPECT_EQ(l.mapped, (Areas{{0, 0x1000}, {0x2000, 0x2000}}));
  EXPECT_EQ(l.trapped, (Areas{{0x1000, 0x1000}}));
}

TEST(BarLayout, TableStraddlingPagesTrapsBoth) {
  auto l = plan_bar(region(0x4000), Area{0xff0, 0x40}, std::nullopt, kPage);
  EXPECT_EQ(l.mapped, (Areas{{0x2000, 0x2000}}));
  EXPECT_EQ(l.trapped, (Areas{{0, 0x2000}}));
}

TEST(BarLayout, KernelSparseAreasAreRespectedAndShrunkToPages) {
  auto r = region(0x10000);
  r.has_sparse = true;
  r.sparse = {{0, 0x3000}, {0x4800, 0x3800}, {0xc000, 0x100}};  // 2nd unaligned start, 3rd smaller than a page
  auto l = plan_bar(r, std::nullopt, std::nullopt, kPage);
  EXPECT_EQ(l.mapped, (Areas{{0, 0x3000}, {0x5000, 0x3000}}));
  EXPECT_EQ(l.trapped, (Areas{{0x3000, 0x2000}, {0x8000, 0x8000}}));
}

TEST(BarLayout, SparseAreaBeyondBarIsClipped) {
  auto r = region(0x4000);
  r.has_sparse = true;
  r.sparse = {{0x2000, 0x10000}, {0x8000, 0x1000}};
  auto l = plan_bar(r, std::nullopt, std::nullopt, kPage);
  EXPECT_EQ(l.mapped, (Areas{{0x2000, 0x2000}}));
}

TEST(BarLayout, UnmappableBarIsTrappedWhole) {
  EXPECT_EQ(plan_bar(region(0x100, false), std::nullopt, std::nullopt, kPage).trapped, (Areas{{0, 0x100}}));
  auto l = plan_bar(region(0x4000, false), std::nullopt, std::nullopt, kPage);
  EXPECT_TRUE(l.mapped.empty());
  EXPECT_EQ(l.trapped, (Areas{{0, 0x4000}}));
}

// A BAR smaller than a page that the host lets us mmap (it reserved the rest of the page) is mapped as
// its whole page; with the MSI-X table in it, it is emulated, so trapped.
TEST(BarLayout, SubPageBarIsMappedAsItsPageWhenTheHostAllows) {
  auto l = plan_bar(region(0x100), std::nullopt, std::nullopt, kPage);
  EXPECT_TRUE(l.whole_page);
  EXPECT_EQ(l.mapped, (Areas{{0, kPage}}));
  EXPECT_TRUE(l.trapped.empty());
  l = plan_bar(region(0x100), Area{0, 0x40}, Area{0x80, 8}, kPage);
  EXPECT_FALSE(l.whole_page);
  EXPECT_EQ(l.trapped, (Areas{{0, 0x100}}));
  vfio::RegionInfo partial = region(0x100);
  partial.has_sparse = true;
  partial.sparse = {{0, 0x80}};
  EXPECT_FALSE(plan_bar(partial, std::nullopt, std::nullopt, kPage).whole_page) << "the host allows only part of it";
}

}  // namespace
}  // namespace passvm::passthru
