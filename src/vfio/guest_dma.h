// vfio: guest RAM as the devices' DMA address space.
//
// Devices see guest-physical addresses (iova = gpa), so all guest RAM is mapped
// into the container once, before the guest runs, whatever the number of
// passthrough devices: the IOMMU then translates their DMA with no help from
// passvm. Mapping pins the memory, which RLIMIT_MEMLOCK limits: that failure is
// reported against the guest's size. GuestDmaMap unmaps in its destructor. Large guests are mapped in
// pieces, each as soon as it is allocated (see the constructor).
#pragma once

#include <cstdint>
#include <vector>

#include "memory/guest_memory.h"
#include "vfio/device.h"

namespace passvm::vfio {

class GuestDmaMap {
 public:
  // Maps every region of guest memory; on failure unmaps what was mapped and throws vfio::VfioError.
  // With populated, RAM is mapped in pieces of kPiece as GuestMemory::populate allocates them, so that
  // pinning (one thread, in the kernel) runs behind the allocating workers instead of after them; a
  // piece populate did not reach is pinned all the same (the kernel then allocates it).
  GuestDmaMap(DmaMapper& mapper, const GuestMemory& memory, PopulateProgress* populated = nullptr,
              uint64_t piece = kPiece);
  static constexpr uint64_t kPiece = uint64_t{1} << 30;
  ~GuestDmaMap();
  GuestDmaMap(const GuestDmaMap&) = delete;
  GuestDmaMap& operator=(const GuestDmaMap&) = delete;

  uint64_t bytes_mapped() const;

 private:
  DmaMapper& mapper_;
  std::vector<Area> mapped_;  // iova ranges
};

}  // namespace passvm::vfio
