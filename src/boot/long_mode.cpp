#include "boot/long_mode.h"

#include <array>
#include <cstring>
#include <vector>

#include "memory/layout.h"

namespace passvm::boot {

namespace {
void put_u64(std::vector<uint8_t>& buf, size_t at, uint64_t v) { std::memcpy(buf.data() + at, &v, sizeof v); }
}  // namespace

uint64_t gdt_descriptor(uint8_t access, uint8_t flags) {
  // Base 0 and limit 0xfffff (with G set: 4 GiB); in long mode only the access byte and L/D matter.
  const uint64_t limit = 0xfffff;
  return (limit & 0xffff) | (static_cast<uint64_t>(access) << 40) | (((limit >> 16) & 0xf) << 48) |
         (static_cast<uint64_t>(flags & 0xf) << 52);
}

LongModeEntry setup_long_mode(const GuestMemory& mem, uint64_t rip, uint64_t rsi) {
  // GDT: two null entries, then code (0x10: present, exec/read, L=1, G=1) and data (0x18: present,
  // read/write, D/B=1, G=1), as the boot protocol asks.
  const std::array<uint64_t, 4> gdt = {0, 0, gdt_descriptor(0x9b, 0xa), gdt_descriptor(0x93, 0xc)};
  mem.write(layout::kGdtAddr, std::span(reinterpret_cast<const uint8_t*>(gdt.data()), sizeof gdt));

  // PML4[0] -> PDPT; PDPT[0..3] -> four page directories of 512 2-MiB pages each.
  const uint64_t present_rw = 0x3, page_size = 0x80;
  std::vector<uint8_t> page(4096, 0);
  put_u64(page, 0, layout::kPdptAddr | present_rw);
  mem.write(layout::kPml4Addr, page);
  std::fill(page.begin(), page.end(), uint8_t{0});
  for (uint64_t i = 0; i < 4; i++) put_u64(page, i * 8, (layout::kPdAddr + i * 4096) | present_rw);
  mem.write(layout::kPdptAddr, page);
  for (uint64_t pd = 0; pd < 4; pd++) {
    for (uint64_t i = 0; i < 512; i++) put_u64(page, i * 8, ((pd * 512 + i) << 21) | present_rw | page_size);
    mem.write(layout::kPdAddr + pd * 4096, page);
  }

  LongModeEntry e;
  e.rip = rip;
  e.rsi = rsi;
  e.rsp = layout::kBootStackTop;
  e.cr0 = kCr0Pe | kCr0Et | kCr0Ne | kCr0Pg;
  e.cr3 = layout::kPml4Addr;
  e.cr4 = kCr4Pae;
  e.efer = kEferLme | kEferLma;
  e.gdt_base = layout::kGdtAddr;
  e.gdt_limit = static_cast<uint16_t>(sizeof gdt - 1);
  return e;
}

}  // namespace passvm::boot
