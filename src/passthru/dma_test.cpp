#include "passthru/dma.h"

#include <cerrno>
#include <map>

#include <gtest/gtest.h>

namespace passvm::passthru {
namespace {

struct RecordingMapper final : vfio::DmaMapper {
  std::map<uint64_t, std::pair<uint64_t, void*>> maps;
  int fail_after = -1, calls = 0, fail_errno = ENOMEM;
  void map_dma(uint64_t iova, uint64_t size, void* hva) override {
    if (fail_after >= 0 && calls++ >= fail_after) throw vfio::VfioError("cannot pin", fail_errno);
    maps[iova] = {size, hva};
  }
  void unmap_dma(uint64_t iova, uint64_t) override { maps.erase(iova); }
};

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
    }
    EXPECT_EQ(dma.bytes_mapped(), mem.size());
  }
  EXPECT_TRUE(m.maps.empty());
}

TEST(GuestDmaMap, PinFailureNamesGuestSizeAndUndoes) {
  GuestMemory mem(64 << 20, false);
  RecordingMapper m;
  m.fail_after = static_cast<int>(mem.regions().size()) - 1;  // the last region fails
  try {
    GuestDmaMap dma(m, mem);
    FAIL() << "expected an error";
  } catch (const vfio::VfioError& e) {
    EXPECT_NE(std::string(e.what()).find("64 MiB"), std::string::npos) << e.what();
    EXPECT_EQ(e.error_number(), ENOMEM);
  }
  EXPECT_TRUE(m.maps.empty());
}

}  // namespace
}  // namespace passvm::passthru
