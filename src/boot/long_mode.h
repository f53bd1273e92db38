// boot/long_mode.h: the GDT and the identity page tables a 64-bit entry
// needs, and the register state to go with them. Used for Linux and for the
// hand-made guests of the kvm tests alike.
#pragma once

#include <cstdint>

#include "memory/guest_memory.h"

namespace passvm::boot {

// Selectors the Linux 64-bit boot protocol requires: __BOOT_CS and __BOOT_DS.
inline constexpr uint16_t kBootCs = 0x10;
inline constexpr uint16_t kBootDs = 0x18;

inline constexpr uint64_t kCr0Pe = 1ull << 0, kCr0Et = 1ull << 4, kCr0Ne = 1ull << 5, kCr0Pg = 1ull << 31;
inline constexpr uint64_t kCr4Pae = 1ull << 5;
inline constexpr uint64_t kEferLme = 1ull << 8, kEferLma = 1ull << 10;

// A flat 64-bit CPU state: paging on with the first 4 GiB identity mapped, interrupts off.
struct LongModeEntry {
  uint64_t rip = 0;
  uint64_t rsi = 0;  // Linux: the zero page
  uint64_t rsp = 0;
  uint64_t cr0 = 0, cr3 = 0, cr4 = 0, efer = 0;
  uint64_t gdt_base = 0;
  uint16_t gdt_limit = 0;
  uint16_t cs = kBootCs, ds = kBootDs;
};

// Writes the GDT (layout::kGdtAddr) and the page tables (layout::kPml4Addr, kPdptAddr, kPdAddr: 2 MiB
// pages over 0-4 GiB) into guest RAM and returns the register state that uses them.
// Throws std::out_of_range if guest RAM does not cover those low pages.
LongModeEntry setup_long_mode(const GuestMemory& mem, uint64_t rip, uint64_t rsi);

// The 8-byte GDT descriptor for a flat segment with the given access byte and flags nibble.
uint64_t gdt_descriptor(uint8_t access, uint8_t flags);

}  // namespace passvm::boot
