#include "vfio/guest_dma.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <thread>
#include <vector>
#include <map>

#include <gtest/gtest.h>

#include "memory/layout.h"
#include "testing/fake_vfio.h"

namespace passvm::vfio {
namespace {

using RecordingMapper = testing::FakeDmaMapper;

TEST(GuestDmaMap, MapsEveryRegionAtItsGuestAddressAndUnmaps) {
  GuestMemory mem(64 << 20, false);
  RecordingMapper m;
  {
    GuestDmaMap dma(m, mem);
    ASSERT_EQ(m.maps.size(), mem.regions().size());
    for (auto& r : mem.regions()) {
      ASSERT_TRUE(m.maps.count(r.gpa));
      EXPECT_EQ(m.maps[r.gpa].first, r.size);
      EXPECT_EQ(m.maps[r.gpa].second, r.hva);
      EXPECT_EQ(m.files[r.gpa].first, -1) << "anonymous memory has no file to share";
    }
    EXPECT_EQ(dma.bytes_mapped(), mem.size());
  }
  EXPECT_TRUE(m.maps.empty());
}

// Each guest RAM region is one mapping, as large as it can be, with guest-physical and host addresses
// 2 MiB aligned alike: the kernel then pins whole huge pages and the IOMMU can use 2 MiB entries.
TEST(GuestDmaMap, MapsEachRegionWholeAndHugePageAligned) {
  GuestMemory mem(3 * layout::GiB + 64 * layout::MiB, false);  // low RAM up to the hole, the rest from 4 GiB
  RecordingMapper m;
  GuestDmaMap dma(m, mem);
  ASSERT_EQ(m.maps.size(), 2u);
  EXPECT_EQ(m.maps.at(0).first, 3 * layout::GiB);
  EXPECT_EQ(m.maps.at(4 * layout::GiB).first, 64 * layout::MiB);
  for (auto& [iova, map] : m.maps) {
    EXPECT_EQ(iova % (2 * layout::MiB), 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(map.second) % (2 * layout::MiB), 0u) << "region at " << iova;
  }
}

TEST(GuestDmaMap, PinFailureNamesGuestSizeAndUndoes) {
  GuestMemory mem(64 << 20, false);
  RecordingMapper m;
  m.fail_after = static_cast<int>(mem.regions().size()) - 1;  // the last region fails
  try {
    GuestDmaMap dma(m, mem);
    FAIL() << "expected an error";
  } catch (const VfioError& e) {
    EXPECT_NE(std::string(e.what()).find("64 MiB"), std::string::npos) << e.what();
    EXPECT_EQ(e.error_number(), ENOMEM);
  }
  EXPECT_TRUE(m.maps.empty());
}

// Behind populate: each piece is pinned once the memory below its end is allocated, never before.
TEST(GuestDmaMap, WithProgressMapsEachPieceOnceItIsAllocated) {
  constexpr uint64_t kChunk = 16 * layout::MiB;
  GuestMemory mem(8 * kChunk, false);
  ASSERT_EQ(mem.regions().size(), 1u);
  struct OrderMapper : DmaMapper {
    std::atomic<uint64_t>* allocated;
    std::vector<std::pair<uint64_t, uint64_t>> maps;  // (end of the piece, bytes allocated when it was mapped)
    void map_dma(const DmaRegion& r) override { maps.push_back({r.iova + r.size, allocated->load()}); }
    void unmap_dma(uint64_t, uint64_t) override {}
  } m;
  std::atomic<uint64_t> allocated{0};
  m.allocated = &allocated;
  PopulateProgress progress;
  progress.start(8, kChunk);
  std::thread populator([&] {
    for (uint64_t c : {1, 0, 3, 2, 5, 4, 7, 6}) {  // out of order, as workers finish
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      if (c % 2 == 0) allocated = (c + 2) * kChunk;  // the prefix is whole once the lower of a pair is done
      progress.chunk_done(c);
    }
    progress.end();
  });
  GuestDmaMap dma(m, mem, &progress, 2 * kChunk);
  populator.join();
  ASSERT_EQ(m.maps.size(), 4u);
  for (const auto& [end, done] : m.maps) EXPECT_GE(done, end) << "piece ending at " << end << " mapped too early";
  EXPECT_EQ(dma.bytes_mapped(), mem.size());
}

TEST(GuestDmaMap, PopulateThatFailedStopsThePinningWithoutPinningItself) {
  GuestMemory mem(64 << 20, false);
  RecordingMapper m;
  PopulateProgress progress;
  progress.start(4, 16 << 20);
  progress.chunk_done(0);
  progress.end();  // the workers gave up after one chunk
  try {
    GuestDmaMap dma(m, mem, &progress, 16 << 20);
    FAIL() << "expected an error";
  } catch (const VfioError& e) {
    EXPECT_NE(std::string(e.what()).find("could not all be allocated"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(m.maps.empty()) << "what was mapped is undone";
}

}  // namespace
}  // namespace passvm::vfio
