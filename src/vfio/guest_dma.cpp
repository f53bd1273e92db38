#include "vfio/guest_dma.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <sstream>
#include <string>

#include <fmt/format.h>

#include "base/eprint.h"

namespace passvm::vfio {

void check_dma_reachable(DmaMapper& mapper, const GuestMemory& memory) {
  const std::vector<IovaRange> ranges = mapper.iova_ranges();
  if (ranges.empty()) return;
  for (const MemoryRegion& r : memory.regions()) {
    const uint64_t last = r.gpa + r.size - 1;
    if (std::any_of(ranges.begin(), ranges.end(), [&](const IovaRange& v) { return v.start <= r.gpa && last <= v.last; }))
      continue;
    std::string usable;
    for (const IovaRange& v : ranges) usable += fmt::format("{}{:#x}-{:#x}", usable.empty() ? "" : ", ", v.start, v.last);
    throw VfioError(fmt::format("guest RAM at {:#x}-{:#x} reaches addresses this host's IOMMU reserves, so devices "
                                "could not reach it (it maps only {}; the rest is listed in "
                                "/sys/kernel/iommu_groups/*/reserved_regions): {}",
                                r.gpa, last, usable,
                                r.gpa == 0 ? "this host cannot give a device to a guest with RAM there"
                                           : "give a smaller -m"),
                    EINVAL);
  }
}

std::string reserved_region_conflict(std::string_view reserved_regions, const std::map<uint64_t, uint64_t>& mapped) {
  std::istringstream in{std::string(reserved_regions)};
  std::string line;
  while (std::getline(in, line)) {
    uint64_t start = 0, last = 0;
    char type[32] = {};
    if (std::sscanf(line.c_str(), "%" SCNx64 " %" SCNx64 " %31s", &start, &last, type) != 3 || last < start) continue;
    if (std::string_view(type) == "direct-relaxable") continue;
    for (auto [iova, size] : mapped) {
      if (size == 0 || iova > last || iova + size - 1 < start) continue;
      return fmt::format("it reserves {:#x}-{:#x} ({}), where this VM already maps guest memory for DMA "
                         "({:#x}-{:#x}: RAM, or a BAR mapped for peer-to-peer DMA)",
                         start, last, type, iova, iova + size - 1);
    }
  }
  return "";
}

GuestDmaMap::GuestDmaMap(DmaMapper& mapper, const GuestMemory& memory, const std::function<bool()>& cancel)
    : mapper_(mapper) {
  // In pieces (dma_piece): a stop waits for one piece, not for all of a large guest's RAM.
  auto undo = [&] {
    for (auto a : mapped_) mapper_.unmap_dma(a.offset, a.size);
    mapped_.clear();
  };
  for (const MemoryRegion& r : memory.regions()) {
    for (uint64_t at = 0; at < r.size;) {
      if (cancel && cancel()) {
        undo();
        throw VfioError("mapping guest RAM for DMA was stopped", ECANCELED);
      }
      const uint64_t gpa = r.gpa + at;
      const uint64_t len = dma_piece(gpa, r.size - at);
      try {
        mapper_.map_dma({.iova = gpa, .size = len, .host = r.hva + at, .fd = memory.fd(), .fd_offset = r.offset + at});
      } catch (const VfioError& e) {
        undo();
        if (e.error_number() == ENOMEM || e.error_number() == EPERM)
          throw VfioError(fmt::format("{} (the guest has {} MiB of RAM to pin)", e.what(), memory.size() >> 20),
                          e.error_number());
        throw;
      }
      mapped_.push_back({gpa, len});
      at += len;
    }
  }
}

GuestDmaMap::~GuestDmaMap() {
  for (auto a : mapped_) {
    try {
      mapper_.unmap_dma(a.offset, a.size);
    } catch (const std::exception& e) {
      eprint("passvm: unmapping guest memory from the IOMMU: {}\n", e.what());
    }
  }
}

uint64_t GuestDmaMap::bytes_mapped() const {
  uint64_t n = 0;
  for (auto a : mapped_) n += a.size;
  return n;
}

}  // namespace passvm::vfio
