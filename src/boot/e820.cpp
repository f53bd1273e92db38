#include "boot/e820.h"

#include <fmt/format.h>

#include <algorithm>

#include "memory/layout.h"

namespace passvm::boot {

std::vector<E820Entry> build_e820(const GuestMemory& mem) {
  std::vector<E820Entry> map;
  for (const auto& r : mem.regions()) {
    if (r.gpa == 0) {
      // GuestMemory refuses less than 16 MiB, so low RAM always reaches past 1 MiB.
      map.push_back({0, layout::kEbdaStart, E820Type::Ram});
      map.push_back({layout::kEbdaStart, layout::kHighMemStart - layout::kEbdaStart, E820Type::Reserved});
      if (r.size > layout::kHighMemStart)
        map.push_back({layout::kHighMemStart, r.size - layout::kHighMemStart, E820Type::Ram});
    } else {
      map.push_back({r.gpa, r.size, E820Type::Ram});
    }
  }
  map.push_back({layout::kEcamStart, layout::kEcamSize, E820Type::Reserved});
  std::sort(map.begin(), map.end(), [](const E820Entry& a, const E820Entry& b) { return a.addr < b.addr; });
  return map;
}

std::string describe_e820(const std::vector<E820Entry>& map) {
  std::string out;
  for (const auto& e : map) {
    const char* type = e.type == E820Type::Ram        ? "usable"
                       : e.type == E820Type::Reserved ? "reserved"
                       : e.type == E820Type::Acpi     ? "ACPI data"
                                                      : "ACPI NVS";
    out += fmt::format("e820: [mem {:#018x}-{:#018x}] {}\n", e.addr, e.addr + e.size - 1, type);
  }
  return out;
}

}  // namespace passvm::boot
