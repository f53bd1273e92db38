// vfio: guest RAM as the devices' DMA address space.
//
// Devices see guest-physical addresses (iova = gpa), so all guest RAM is mapped
// into the container once, whatever the number of passthrough devices: the IOMMU
// then translates their DMA with no help from passvm. The machine maps it while the
// guest starts, before any device may master the bus (passthru/dma_ready.h). Mapping
// pins the memory, which RLIMIT_MEMLOCK limits: that failure is reported against the
// guest's size. GuestDmaMap unmaps in its destructor.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "memory/guest_memory.h"
#include "vfio/device.h"

namespace passvm::vfio {

// Throws VfioError naming the RAM and the usable ranges when some guest RAM lies where the container's
// IOMMU maps nothing (VFIO would refuse it with a bare EINVAL, after pinning what came before). Asks the
// kernel (VFIO_IOMMU_GET_INFO): call it where the thread may, before any pinning.
void check_dma_reachable(DmaMapper& mapper, const GuestMemory& memory);

// Why the kernel refused (EINVAL) to add an IOMMU group to a container whose DMA mappings (iova -> size:
// guest RAM, and BARs mapped for peer-to-peer DMA) are made: the first of the group's reserved regions (its sysfs `reserved_regions` text) that one of them
// overlaps, as the kernel's own check does (it lets "direct-relaxable" ones be). "" when none does.
std::string reserved_region_conflict(std::string_view reserved_regions, const std::map<uint64_t, uint64_t>& mapped);

class GuestDmaMap {
 public:
  // Maps every region of guest memory, in pieces of at most 1 GiB, checking `cancel` (when given) between
  // them; on failure or cancel unmaps what was mapped and throws vfio::VfioError (ECANCELED when
  // cancelled). Pinning allocates any page not allocated yet, one after the other in the calling thread:
  // allocate RAM first (GuestMemory::populate, in parallel), and not beside this (Machine says why).
  GuestDmaMap(DmaMapper& mapper, const GuestMemory& memory, const std::function<bool()>& cancel = {});
  ~GuestDmaMap();
  GuestDmaMap(const GuestDmaMap&) = delete;
  GuestDmaMap& operator=(const GuestDmaMap&) = delete;

  uint64_t bytes_mapped() const;

 private:
  DmaMapper& mapper_;
  std::vector<Area> mapped_;  // iova ranges
};

}  // namespace passvm::vfio
