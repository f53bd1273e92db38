// passthru: which parts of a BAR the guest reaches directly and which are trapped.
//
// Mapped parts become KVM memory slots (no exits); they must be whole host
// pages inside areas the transport lets us mmap. The MSI-X table and PBA are
// emulated, so the page(s) holding them are trapped even when the table is not
// page aligned: the rest of such a page is then forwarded to the device by
// passvm. Everything not mapped is trapped.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "vfio/device.h"

namespace passvm::passthru {

struct BarLayout {
  std::vector<vfio::Area> mapped;   // page aligned, sorted
  std::vector<vfio::Area> trapped;  // the complement of mapped in [0, bar size), sorted
};

// region: what the transport says of the BAR (size, mmappable, sparse areas).
// table/pba: the MSI-X structures when they live in this BAR.
BarLayout plan_bar(const vfio::RegionInfo& region, std::optional<vfio::Area> table, std::optional<vfio::Area> pba,
                   uint64_t page_size);

}  // namespace passvm::passthru
