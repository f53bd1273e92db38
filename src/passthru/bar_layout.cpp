#include "passthru/bar_layout.h"

#include <algorithm>

namespace passvm::passthru {
namespace {

uint64_t align_down(uint64_t v, uint64_t a) { return v & ~(a - 1); }
uint64_t align_up(uint64_t v, uint64_t a) { return align_down(v + a - 1, a); }

// Removes [cut.offset, cut.offset+cut.size) from every area.
std::vector<vfio::Area> subtract(const std::vector<vfio::Area>& areas, vfio::Area cut) {
  std::vector<vfio::Area> out;
  uint64_t cut_end = cut.offset + cut.size;
  for (auto a : areas) {
    uint64_t end = a.offset + a.size;
    if (cut_end <= a.offset || cut.offset >= end) {
      out.push_back(a);
      continue;
    }
    if (cut.offset > a.offset) out.push_back({a.offset, cut.offset - a.offset});
    if (cut_end < end) out.push_back({cut_end, end - cut_end});
  }
  return out;
}

}  // namespace

BarLayout plan_bar(const vfio::RegionInfo& region, std::optional<vfio::Area> table, std::optional<vfio::Area> pba,
                   uint64_t page_size) {
  BarLayout out;
  uint64_t size = region.size;
  if (size == 0) return out;
  bool sparse_covers = !region.has_sparse || std::any_of(region.sparse.begin(), region.sparse.end(), [&](auto a) {
    return a.offset == 0 && a.size >= size;
  });
  if (region.mmappable && size < page_size && sparse_covers && !table && !pba) {
    out.mapped.push_back({0, page_size});
    out.whole_page = true;
    return out;
  }
  std::vector<vfio::Area> areas;
  if (region.mmappable && size >= page_size) {
    if (region.has_sparse)
      areas = region.sparse;
    else
      areas.push_back({0, size});
  }
  // Clip to the BAR and to whole pages.
  std::vector<vfio::Area> pages;
  for (auto a : areas) {
    if (a.offset >= size) continue;
    uint64_t end = std::min(size, a.offset + std::min(a.size, size - a.offset));
    uint64_t start = align_up(a.offset, page_size);
    end = align_down(end, page_size);
    if (end > start) pages.push_back({start, end - start});
  }
  for (auto cut : {table, pba}) {
    if (!cut || cut->size == 0) continue;
    uint64_t start = align_down(cut->offset, page_size);
    pages = subtract(pages, {start, align_up(cut->offset + cut->size, page_size) - start});
  }
  std::sort(pages.begin(), pages.end(), [](auto a, auto b) { return a.offset < b.offset; });
  out.mapped = pages;
  uint64_t at = 0;
  for (auto m : pages) {
    if (m.offset > at) out.trapped.push_back({at, m.offset - at});
    at = m.offset + m.size;
  }
  if (at < size) out.trapped.push_back({at, size - at});
  return out;
}

}  // namespace passvm::passthru
