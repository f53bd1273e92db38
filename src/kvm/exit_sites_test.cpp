#include "kvm/exit_sites.h"

#include <gtest/gtest.h>

#include <memory>
#include <thread>

namespace passvm {
namespace {

TEST(ExitSites, CountsEachAddressAndDirectionApart) {
  ExitSites s;
  for (int i = 0; i < 5; i++) s.add(false, false, 0x3fd);
  s.add(false, true, 0x3fd);
  s.add(true, false, 0x3fd);
  s.add(false, false, 0);  // port 0 is an address like any other
  auto sites = ExitSites::busiest({s.sites()}, 0);
  ASSERT_EQ(sites.size(), 4u);
  EXPECT_EQ(sites[0].text(), "port 0x3fd read");
  EXPECT_EQ(sites[0].count, 5u);
  uint64_t total = 0;
  for (const auto& x : sites) total += x.count;
  EXPECT_EQ(total, 8u);
  EXPECT_EQ(s.overflow(), 0u);
}

TEST(ExitSites, AddressesBeyondTheTableAreCountedAsOverflow) {
  auto s = std::make_unique<ExitSites>();
  for (uint64_t a = 0; a < ExitSites::kSlots + 10; a++) s->add(true, true, 0xfe000000 + a * 4);
  EXPECT_EQ(s->sites().size(), ExitSites::kSlots);
  EXPECT_EQ(s->overflow(), 10u);
  s->add(true, true, 0xfe000000);  // one already in the table still counts there
  EXPECT_EQ(s->overflow(), 10u);
}

TEST(ExitSites, BusiestSumsVcpusAndKeepsTheTopN) {
  ExitSites a, b;
  for (int i = 0; i < 3; i++) a.add(false, false, 0xcfc);
  for (int i = 0; i < 4; i++) b.add(false, false, 0xcfc);
  for (int i = 0; i < 6; i++) b.add(false, true, 0xcf8);
  a.add(false, false, 0x71);
  auto top = ExitSites::busiest({a.sites(), b.sites()}, 2);
  ASSERT_EQ(top.size(), 2u);
  EXPECT_EQ(top[0].addr, 0xcfcu);
  EXPECT_EQ(top[0].count, 7u);
  EXPECT_EQ(top[1].addr, 0xcf8u);
  EXPECT_TRUE(top[1].write);
}

TEST(ExitSites, ReadingWhileTheVcpuCountsSeesOnlyWholeSites) {
  ExitSites s;
  std::thread writer([&] {
    for (int i = 0; i < 20000; i++) s.add(true, i % 2 == 0, 0x1000 + (i % 64) * 8);
  });
  for (int i = 0; i < 200; i++)
    for (const auto& x : s.sites()) ASSERT_GE(x.count, 1u) << x.text();  // a published key has its count
  writer.join();
  uint64_t total = 0;
  for (const auto& x : s.sites()) total += x.count;
  EXPECT_EQ(total, 20000u);
}

}  // namespace
}  // namespace passvm
