#include "vfio/guest_dma.h"

#include <cerrno>

#include <fmt/format.h>

namespace passvm::vfio {

GuestDmaMap::GuestDmaMap(DmaMapper& mapper, const GuestMemory& memory) : mapper_(mapper) {
  for (const MemoryRegion& r : memory.regions()) {
    try {
      mapper_.map_dma({.iova = r.gpa, .size = r.size, .host = r.hva, .fd = memory.fd(), .fd_offset = r.offset});
    } catch (const VfioError& e) {
      for (auto a : mapped_) mapper_.unmap_dma(a.offset, a.size);
      mapped_.clear();
      if (e.error_number() == ENOMEM || e.error_number() == EPERM)
        throw VfioError(fmt::format("{} (the guest has {} MiB of RAM to pin)", e.what(), memory.size() >> 20),
                        e.error_number());
      throw;
    }
    mapped_.push_back({r.gpa, r.size});
  }
}

GuestDmaMap::~GuestDmaMap() {
  for (auto a : mapped_) {
    try {
      mapper_.unmap_dma(a.offset, a.size);
    } catch (const std::exception& e) {
      fmt::print(stderr, "passvm: unmapping guest memory from the IOMMU: {}\n", e.what());
    }
  }
}

uint64_t GuestDmaMap::bytes_mapped() const {
  uint64_t n = 0;
  for (auto a : mapped_) n += a.size;
  return n;
}

}  // namespace passvm::vfio
