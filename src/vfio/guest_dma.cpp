#include "vfio/guest_dma.h"

#include <algorithm>

#include <cerrno>

#include <fmt/format.h>

namespace passvm::vfio {

GuestDmaMap::GuestDmaMap(DmaMapper& mapper, const GuestMemory& memory, PopulateProgress* populated,
                         uint64_t piece_size)
    : mapper_(mapper) {
  for (const MemoryRegion& r : memory.regions()) {
    const uint64_t piece = populated ? piece_size : r.size;
    for (uint64_t off = 0; off < r.size; off += piece) {
      const uint64_t len = std::min(piece, r.size - off);
      try {
        if (populated && !populated->wait_for(r.offset + off + len))
          throw VfioError("guest RAM could not all be allocated, so it is not pinned", ENOMEM);
        mapper_.map_dma({.iova = r.gpa + off, .size = len, .host = r.hva + off, .fd = memory.fd(),
                         .fd_offset = r.offset + off});
      } catch (const VfioError& e) {
        for (auto a : mapped_) mapper_.unmap_dma(a.offset, a.size);
        mapped_.clear();
        if (e.error_number() == ENOMEM || e.error_number() == EPERM)
          throw VfioError(fmt::format("{} (the guest has {} MiB of RAM to pin)", e.what(), memory.size() >> 20),
                          e.error_number());
        throw;
      }
      mapped_.push_back({r.gpa + off, len});
    }
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
