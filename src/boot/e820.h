// boot/e820.h: the guest's memory map, as firmware would report it.
//
// Linux takes its RAM from the e820 table in the zero page, and it only trusts
// PCI MMCONFIG (ECAM) when the window is reserved there, so the ECAM window is
// listed explicitly. The legacy hole below 1 MiB (EBDA, VGA, BIOS ROM area,
// where the ACPI RSDP lives) is reserved too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "memory/guest_memory.h"

namespace passvm::boot {

enum class E820Type : uint32_t { Ram = 1, Reserved = 2, Acpi = 3, Nvs = 4 };

struct E820Entry {
  uint64_t addr;
  uint64_t size;
  E820Type type;
  bool operator==(const E820Entry&) const = default;
};

// RAM 0-0x9fc00, reserved 0x9fc00-1 MiB, RAM 1 MiB to the end of low RAM, the ECAM window reserved,
// RAM from 4 GiB when the guest has more than fits below the hole. Sorted by address.
std::vector<E820Entry> build_e820(const GuestMemory& mem);

// "e820: [mem 0x...-0x...] usable" lines, for logs and error messages.
std::string describe_e820(const std::vector<E820Entry>& map);

}  // namespace passvm::boot
