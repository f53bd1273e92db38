#include "vfio/guest_dma.h"

#include <cerrno>
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

// Each guest RAM region is mapped in pieces of 1 GiB of guest-physical address (so that a stop waits for one
// piece), with guest-physical and host addresses 2 MiB aligned alike: the kernel then pins whole huge
// pages and the IOMMU can use 2 MiB entries.
TEST(GuestDmaMap, MapsEachRegionInGibPiecesHugePageAligned) {
  GuestMemory mem(3 * layout::GiB + 64 * layout::MiB, false);  // low RAM up to the hole, the rest from 4 GiB
  RecordingMapper m;
  GuestDmaMap dma(m, mem);
  ASSERT_EQ(m.maps.size(), 4u);
  for (uint64_t gib = 0; gib < 3; gib++) {
    ASSERT_TRUE(m.maps.count(gib * layout::GiB));
    EXPECT_EQ(m.maps.at(gib * layout::GiB).first, layout::GiB);
  }
  EXPECT_EQ(m.maps.at(4 * layout::GiB).first, 64 * layout::MiB);
  EXPECT_EQ(dma.bytes_mapped(), mem.size());
  for (auto& [iova, map] : m.maps) {
    EXPECT_EQ(iova % (2 * layout::MiB), 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(map.second) % (2 * layout::MiB), 0u) << "region at " << iova;
    EXPECT_EQ(static_cast<uint8_t*>(map.second), mem.host_address(iova, map.first)) << "piece at " << iova;
  }
}

TEST(GuestDmaMap, ACancelStopsBetweenPiecesAndUndoes) {
  GuestMemory mem(2 * layout::GiB, false);
  RecordingMapper m;
  int asked = 0;
  try {
    GuestDmaMap dma(m, mem, [&] { return ++asked == 2; });  // stopped after its first GiB
    FAIL() << "expected the cancel to stop the mapping";
  } catch (const VfioError& e) {
    EXPECT_EQ(e.error_number(), ECANCELED);
  }
  EXPECT_EQ(asked, 2);
  EXPECT_TRUE(m.maps.empty()) << "the piece mapped before the cancel was not unmapped";
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

TEST(GuestDmaMap, RamInAReservedRangeIsNamed) {
  GuestMemory mem(3 * layout::GiB + 64 * layout::MiB, false);
  RecordingMapper m;
  // The MSI window of an Intel host, and a reserved range that cuts into RAM above 4 GiB.
  m.ranges = {{0, 0xfedfffff}, {0xfef00000, 4 * layout::GiB + 15 * layout::MiB},
              {4 * layout::GiB + 32 * layout::MiB, (uint64_t{1} << 48) - 1}};
  try {
    check_dma_reachable(m, mem);
    FAIL() << "expected an error";
  } catch (const VfioError& e) {
    EXPECT_NE(std::string(e.what()).find("guest RAM at 0x100000000-0x103ffffff reaches addresses this host's IOMMU "
                                         "reserves"),
              std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("give a smaller -m"), std::string::npos) << e.what();
  }
  EXPECT_EQ(m.attempts, 0) << "nothing pinned";
  // Low RAM alone stays clear of the MSI window.
  GuestMemory low(64 * layout::MiB, false);
  EXPECT_NO_THROW(check_dma_reachable(m, low));
}

TEST(GuestDmaMap, TheIommuLimitIsTheEndOfItsLastRange) {
  RecordingMapper m;
  EXPECT_EQ(m.iova_limit(), 0u) << "unknown";
  m.ranges = {{0, 0xfedfffff}, {0xfef00000, (uint64_t{1} << 39) - 1}};
  EXPECT_EQ(m.iova_limit(), uint64_t{1} << 39);
}

TEST(ReservedRegionConflict, NamesTheRegionAndTheRamThatOverlapIt) {
  // RAM mapped at 0-2 GiB and at 4-5 GiB; a hot-added group whose firmware keeps a region inside the first.
  const std::map<uint64_t, uint64_t> mapped = {{0, 2 * layout::GiB}, {4 * layout::GiB, layout::GiB}};
  const std::string regions =
      "0x000000007a000000 0x000000007a0fffff direct\n"
      "0x00000000fee00000 0x00000000feefffff msi\n";
  EXPECT_EQ(reserved_region_conflict(regions, mapped),
            "it reserves 0x7a000000-0x7a0fffff (direct), where this VM already maps guest memory for DMA "
            "(0x0-0x7fffffff: RAM, or a BAR mapped for peer-to-peer DMA)");
  // A region that touches the last byte of a mapping overlaps it; one right after does not.
  EXPECT_NE(reserved_region_conflict("0x000000013fffffff 0x0000000140000fff reserved\n", mapped), "");
  EXPECT_EQ(reserved_region_conflict("0x0000000140000000 0x0000000140000fff reserved\n", mapped), "");
}

TEST(ReservedRegionConflict, IgnoresWhatTheKernelLetsThroughAndWhatItCannotRead) {
  const std::map<uint64_t, uint64_t> mapped = {{0, 2 * layout::GiB}};
  // The kernel lets RAM cover a "direct-relaxable" region (USB and graphics firmware buffers).
  EXPECT_EQ(reserved_region_conflict("0x000000007a000000 0x000000007a0fffff direct-relaxable\n", mapped), "");
  EXPECT_EQ(reserved_region_conflict("0x00000000fee00000 0x00000000feefffff msi\n", mapped), "") << "above RAM";
  EXPECT_EQ(reserved_region_conflict("", mapped), "");
  EXPECT_EQ(reserved_region_conflict("garbage\n0x10 0x0 direct\n", mapped), "") << "malformed lines are skipped";
  EXPECT_EQ(reserved_region_conflict("0x000000007a000000 0x000000007a0fffff direct\n", {}), "") << "nothing mapped";
}

}  // namespace
}  // namespace passvm::vfio
