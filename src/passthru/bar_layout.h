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
  // A BAR smaller than a page that the transport lets us mmap (vfio-pci does when the BAR starts a host
  // page and it reserved the rest of that page): mapped = its whole page. The guest page must be
  // whole too, so where the guest puts it at an address that is not page aligned, it is trapped instead.
  bool whole_page = false;
};

// region: what the transport says of the BAR (size, mmappable, sparse areas).
// table/pba: the MSI-X structures when they live in this BAR (a sub-page BAR holding them is trapped).
BarLayout plan_bar(const vfio::RegionInfo& region, std::optional<vfio::Area> table, std::optional<vfio::Area> pba,
                   uint64_t page_size);

}  // namespace passvm::passthru
