// passthru: BARs in the IOMMU for peer-to-peer DMA, mapped off the guest's path.
//
// Mapping a BAR into the IOMMU costs time in proportion to its size on kernels that
// map device memory page by page (before 6.12): 41 s for a 64 GiB BAR in the lab,
// seconds on hardware. The guest must not stall that long when it turns decoding on,
// so maps are queued to a thread of their own; a peer's DMA into the BAR works once its
// map is done (before that the IOMMU blocks it, as with p2p=off). A BAR is mapped in
// pieces of at most 1 GiB (naturally aligned, so the IOMMU keeps its large pages), so
// that a map in progress can be stopped between pieces: unmap() takes a queued map back
// or stops the one in progress, then unmaps what was mapped; when it returns, no peer can
// reach the range. The longest wait, at a stop or when the guest moves a BAR, is one piece.
//
// Lifetime: owned by BarMapper; the DmaMapper outlives it. Thread safety: its own mutex;
// the worker never takes the device's lock. The destructor drops the queue, waits for the
// map in progress and unmaps everything.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "passthru/warning_limit.h"
#include "vfio/device.h"

namespace passvm::passthru {

class PeerDma {
 public:
  PeerDma(vfio::DmaMapper& iommu, std::string name, bool verbose);
  ~PeerDma();
  PeerDma(const PeerDma&) = delete;
  PeerDma& operator=(const PeerDma&) = delete;

  // Queues [iova, iova + size) -> host, part of BAR `bar` (for messages).
  void map(int bar, uint64_t iova, uint64_t size, void* host);
  void unmap(uint64_t iova);
  // Returns once nothing is queued or in progress, and what was done has been said.
  void wait_idle();
  size_t mapped() const;
  // The map in progress was asked to stop after its current piece (unmap() is waiting for it).
  bool stopping() const;
  // BARs the IOMMU refused (printed for the first few, counted after).
  uint64_t refused() const { return refused_.count(); }

 private:
  struct Job {
    int bar;
    uint64_t iova, size;
    void* host;
  };
  void run();
  void unmap_pieces(uint64_t iova);  // with m_ held

  vfio::DmaMapper& iommu_;
  std::string name_;
  bool verbose_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  std::optional<Job> busy_;
  bool cancel_ = false;  // stop the job in progress after its current piece
  bool saying_ = false;  // the worker is printing what the last job did (m_ released meanwhile)
  // Pieces in the IOMMU, by the iova of their job: {iova, size} each.
  std::map<uint64_t, std::vector<vfio::Area>> done_;
  bool stop_ = false;
  WarningLimit refused_{name_, "BARs refused for peer-to-peer DMA", "refused"};
  WarningLimit said_{name_, "peer-to-peer mapping reports (-v)", "remaps", 64};  // -v's, one per map or unmap
  std::thread worker_;  // started with the first map
};

}  // namespace passvm::passthru
