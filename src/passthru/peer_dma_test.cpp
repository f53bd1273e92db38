#include "passthru/peer_dma.h"

#include <algorithm>
#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <utility>

#include <gtest/gtest.h>

namespace passvm::passthru {
namespace {

// An IOMMU whose maps wait until the test opens the gate, as a slow kernel's do.
struct GatedIommu final : vfio::DmaMapper {
  std::mutex m;
  std::condition_variable cv;
  bool open = false;
  int started = 0;
  std::map<uint64_t, uint64_t> maps;
  void map_dma(const vfio::DmaRegion& r) override {
    std::unique_lock g(m);
    started++;
    cv.notify_all();
    cv.wait(g, [&] { return open; });
    maps[r.iova] = r.size;
  }
  void unmap_dma(uint64_t iova, uint64_t) override {
    std::lock_guard g(m);
    maps.erase(iova);
  }
  void wait_started(int n) {
    std::unique_lock g(m);
    cv.wait(g, [&] { return started >= n; });
  }
  void release() {
    std::lock_guard g(m);
    open = true;
    cv.notify_all();
  }
  size_t count() {
    std::lock_guard g(m);
    return maps.size();
  }
};

TEST(PeerDma, MapsInTheBackgroundAndUnmapWaitsForAMapInProgress) {
  GatedIommu iommu;
  PeerDma peers(iommu, "test", false);
  peers.map(2, 0x4000000000, 1 << 20, nullptr);
  iommu.wait_started(1);  // the map call returned to the caller while the IOMMU is still busy
  auto unmapped = std::async(std::launch::async, [&] { peers.unmap(0x4000000000); });
  EXPECT_EQ(unmapped.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout)
      << "unmap must wait for the map in progress";
  iommu.release();
  unmapped.get();
  EXPECT_EQ(iommu.count(), 0u) << "mapped, then unmapped: no peer reaches the range";
  EXPECT_EQ(peers.mapped(), 0u);
}

TEST(PeerDma, QueuedMapsTakenBackAreNeverMade) {
  GatedIommu iommu;
  {
    PeerDma peers(iommu, "test", false);
    peers.map(0, 0x1000, 0x1000, nullptr);
    iommu.wait_started(1);
    peers.map(2, 0x4000000000, 1 << 20, nullptr);  // queued behind the first
    peers.map(4, 0x5000000000, 1 << 20, nullptr);
    peers.unmap(0x4000000000);
    iommu.release();
    peers.wait_idle();
    EXPECT_EQ(iommu.count(), 2u);
    EXPECT_FALSE(iommu.maps.count(0x4000000000));
    EXPECT_EQ(peers.mapped(), 2u);
  }
  EXPECT_EQ(iommu.count(), 0u) << "the destructor unmaps what is mapped";
}

// A huge BAR goes in in 1 GiB pieces, so a stop does not wait for all of it.
TEST(PeerDma, AHugeBarIsMappedInPiecesAndAStopWaitsForOnePiece) {
  GatedIommu iommu;
  constexpr uint64_t kGiB = uint64_t{1} << 30;
  {
    PeerDma peers(iommu, "test", false);
    peers.map(2, 256 * kGiB, 64 * kGiB, nullptr);
    iommu.wait_started(1);
    auto unmapped = std::async(std::launch::async, [&] { peers.unmap(256 * kGiB); });
    while (!peers.stopping()) std::this_thread::yield();
    iommu.release();
    unmapped.get();
    EXPECT_EQ(iommu.started, 1) << "stopped after the piece in progress";
    EXPECT_EQ(iommu.count(), 0u);
  }
  GatedIommu open;
  open.release();
  PeerDma peers(open, "test", false);
  peers.map(2, 256 * kGiB + kGiB / 2, 3 * kGiB, nullptr);  // starts half-way into a GiB
  peers.wait_idle();
  ASSERT_EQ(open.count(), 4u);
  EXPECT_EQ(open.maps[256 * kGiB + kGiB / 2], kGiB / 2) << "up to the first GiB boundary";
  EXPECT_EQ(open.maps[257 * kGiB], kGiB);
  EXPECT_EQ(open.maps[259 * kGiB], kGiB / 2);
}

// An IOMMU that takes the first piece of every map and refuses the next, as one out of mappings would.
struct RefusingIommu final : vfio::DmaMapper {
  std::mutex m;
  std::map<uint64_t, uint64_t> maps;
  bool refuse_next = false;
  void map_dma(const vfio::DmaRegion& r) override {
    std::lock_guard g(m);
    if (std::exchange(refuse_next, false)) throw vfio::VfioError("VFIO_IOMMU_MAP_DMA: No space left on device");
    maps[r.iova] = r.size;
    refuse_next = true;
  }
  void unmap_dma(uint64_t iova, uint64_t) override {
    std::lock_guard g(m);
    maps.erase(iova);
  }
};

// A guest may place a BAR the IOMMU refuses again and again: each refusal leaves nothing half-mapped,
// and stderr hears of the first few only.
TEST(PeerDma, RefusedBarsAreUnmappedWholeAndSaidAFewTimesOnly) {
  constexpr uint64_t kGiB = uint64_t{1} << 30;
  RefusingIommu iommu;
  PeerDma peers(iommu, "0000:00:03.0", false);
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < 20; i++) {
    iommu.refuse_next = false;
    peers.map(2, 256 * kGiB, 2 * kGiB, nullptr);
    peers.wait_idle();
    EXPECT_TRUE(iommu.maps.empty()) << "the piece that was mapped goes when the next is refused";
  }
  const std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(peers.refused(), 20u);
  EXPECT_EQ(peers.mapped(), 0u);
  const auto lines = std::count(said.begin(), said.end(), '\n');
  EXPECT_EQ(lines, static_cast<long>(WarningLimit::kPrinted) + 1) << said;
  EXPECT_NE(said.find("the IOMMU refused BAR 2 at 0x4000000000 for peer-to-peer DMA"), std::string::npos) << said;
  EXPECT_NE(said.find("only counted"), std::string::npos) << said;
}

// -v reports each map and unmap; a guest moving a BAR in a loop gets a bounded number of them.
TEST(PeerDma, VerboseReportsAreBounded) {
  GatedIommu iommu;
  iommu.release();
  PeerDma peers(iommu, "0000:00:03.0", true);
  ::testing::internal::CaptureStderr();
  for (int i = 0; i < 100; i++) {
    peers.map(2, 0x4000000000, 1 << 20, nullptr);
    peers.wait_idle();
    peers.unmap(0x4000000000);
  }
  const std::string said = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(iommu.count(), 0u);
  EXPECT_EQ(std::count(said.begin(), said.end(), '\n'), 65) << said.substr(0, 400);
  EXPECT_NE(said.find("open to peer-to-peer DMA"), std::string::npos);
}

}  // namespace
}  // namespace passvm::passthru
