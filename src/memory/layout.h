// layout: the guest-physical address map of a passvm x86 machine.
//
// One place for every fixed address, so that the e820 map, the ACPI tables,
// the PCI bus and the devices agree. RAM is split around the 32-bit PCI hole:
// up to 3 GiB below it, the rest from 4 GiB up, or from 1 TiB up on AMD hosts
// when it would reach their HyperTransport hole. Large 64-bit BARs go in a
// window well above any RAM, leaving room for big devices.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace passvm::layout {

inline constexpr uint64_t KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;

// A size as messages name it: "2 MiB", "1 GiB", "256 KiB", or "3000 bytes" when it is no whole unit.
inline std::string size_text(uint64_t bytes) {
  if (bytes >= GiB && bytes % GiB == 0) return std::to_string(bytes / GiB) + " GiB";
  if (bytes >= MiB && bytes % MiB == 0) return std::to_string(bytes / MiB) + " MiB";
  if (bytes >= KiB && bytes % KiB == 0) return std::to_string(bytes / KiB) + " KiB";
  return std::to_string(bytes) + " bytes";
}

// Low memory used by the boot path (all inside RAM, all below 1 MiB).
inline constexpr uint64_t kGdtAddr = 0x500;
inline constexpr uint64_t kBootParamsAddr = 0x7000;    // Linux zero page
inline constexpr uint64_t kBootStackTop = 0x8ff0;      // initial rsp
inline constexpr uint64_t kPml4Addr = 0x9000;          // identity page tables: PML4, PDPT, 4 PDs
inline constexpr uint64_t kPdptAddr = 0xa000;
inline constexpr uint64_t kPdAddr = 0xb000;            // 4 pages: maps the first 4 GiB with 2 MiB pages
inline constexpr uint64_t kCmdlineAddr = 0x20000;
inline constexpr uint64_t kCmdlineMax = 0x10000;
inline constexpr uint64_t kEbdaStart = 0x9fc00;        // e820 RAM ends here; EBDA and ROM area follow
inline constexpr uint64_t kAcpiStart = 0xe0000;        // RSDP and tables live in the BIOS ROM area
inline constexpr uint64_t kAcpiSize = 0x20000;         // up to 1 MiB
inline constexpr uint64_t kHighMemStart = 1 * MiB;
inline constexpr uint64_t kKernelAddr = 1 * MiB;       // protected-mode kernel load address

// The 32-bit hole.
inline constexpr uint64_t kLowRamMax = 3 * GiB;
inline constexpr uint64_t kMmio32Start = 3 * GiB;      // 32-bit BARs
inline constexpr uint64_t kMmio32Size = 512 * MiB;
inline constexpr uint64_t kEcamStart = 0xe0000000;     // PCI ECAM (MMCONFIG), bus 0 only
inline constexpr uint64_t kEcamBuses = 1;
inline constexpr uint64_t kEcamSize = kEcamBuses * 1 * MiB;
inline constexpr uint64_t kVirtioConsoleAddr = 0xfeb00000;  // virtio-mmio registers and config space
inline constexpr uint64_t kVirtioConsoleSize = 0x200;
inline constexpr uint64_t kIoapicAddr = 0xfec00000;
inline constexpr uint64_t kLapicAddr = 0xfee00000;
inline constexpr uint64_t kHighRamStart = 4 * GiB;
// AMD and Hygon hosts keep the 12 GiB below 1 TiB for HyperTransport: their IOMMU maps nothing there, so
// guest RAM in it could not be pinned for a passed-through device (and a BAR there could not be reached
// by another device). On those hosts a guest whose RAM would reach it gets all RAM above 4 GiB from 1 TiB
// up instead, as QEMU does.
inline constexpr uint64_t kHtHoleStart = 0xfd00000000;
inline constexpr uint64_t kHtHoleEnd = 1024 * GiB;

// 64-bit BARs: the machine's window comes from its physical address bits (pci_windows below); this one
// is what a machine with 37 bits would get, and what tests use.
inline constexpr uint64_t kMmio64Start = 64 * GiB;
inline constexpr uint64_t kMmio64Size = 64 * GiB;

// Port I/O.
inline constexpr uint16_t kCom1Port = 0x3f8;
inline constexpr uint16_t kCom1Irq = 4;
inline constexpr uint16_t kRtcPort = 0x70;  // CMOS RTC: index 0x70, data 0x71
inline constexpr uint16_t kRtcIrq = 8;
inline constexpr uint16_t kVirtioConsoleIrq = 5;  // a free ISA IRQ: the DSDT gives it as IRQNoFlags
inline constexpr uint16_t kPciConfigAddrPort = 0xcf8;   // 0xcf8-0xcff: configuration mechanism #1
inline constexpr uint16_t kResetPort = 0xcf9;           // within the 0xcf8 dword: handled by the PCI root
inline constexpr uint16_t kAcpiPmBase = 0x600;          // PM1a event (4), PM1a control (2) blocks
inline constexpr uint16_t kAcpiPm1aEvt = kAcpiPmBase;
inline constexpr uint16_t kAcpiPm1aCnt = kAcpiPmBase + 4;
inline constexpr uint16_t kAcpiGpe0 = kAcpiPmBase + 8;    // GPE0 status (2), enable (2)
inline constexpr uint16_t kPvpanicPort = 0x505;          // pvpanic (QEMU's port: the guest's driver finds it in the DSDT)
inline constexpr uint16_t kPciHotplugPort = 0xae00;       // PCI hotplug: slots up, slots down, eject (3 dwords)
inline constexpr uint16_t kAcpiSciIrq = 9;
inline constexpr uint16_t kIoBarStart = 0xc000;         // I/O BARs
inline constexpr uint16_t kIoBarSize = 0x4000;

// A range of guest-physical addresses (or ports) where devices may be placed.
struct Window {
  uint64_t start = 0, size = 0;
  uint64_t end() const { return start + size; }  // one past the last byte
  // [address, address + length) lies wholly inside.
  bool holds(uint64_t address, uint64_t length) const {
    return address >= start && length <= size && address - start <= size - length;
  }
};

// Where the guest's PCI BARs may live.
struct PciWindows {
  Window io{kIoBarStart, kIoBarSize};
  Window mmio32{kMmio32Start, kMmio32Size};
  Window mmio64{kMmio64Start, kMmio64Size};
};

// Where RAM above the 32-bit hole begins for `ram` bytes: 4 GiB, or 1 TiB on a host with the HyperTransport
// hole (ht_hole) when RAM from 4 GiB would reach into it.
inline constexpr uint64_t high_ram_start(uint64_t ram, bool ht_hole = false) {
  return ht_hole && ram > kLowRamMax && kHighRamStart + (ram - kLowRamMax) > kHtHoleStart ? kHtHoleEnd
                                                                                          : kHighRamStart;
}

// The end of guest RAM (one past its last byte) for `ram` bytes split around the 32-bit hole.
inline constexpr uint64_t ram_end(uint64_t ram, bool ht_hole = false) {
  return ram <= kLowRamMax ? ram : high_ram_start(ram, ht_hole) + (ram - kLowRamMax);
}

// The 64-bit window of a machine whose vCPUs have `phys_bits` physical address bits and whose IOMMU (when
// devices are passed through) maps addresses below `iova_limit` (0: no limit): the upper half of the
// address space both reach, so that one variable MTRR covers it and huge BARs (tens of GiB) fit, or,
// when RAM reaches into that half, from the first GiB above RAM to the top. The window keeps at least an
// eighth of the CPU's address space; max_ram() is the most RAM that leaves it. With the HyperTransport
// hole, a window that would reach into it ends below it (or begins above it).
inline Window mmio64_window(uint64_t ram, uint32_t phys_bits, uint64_t iova_limit = 0, bool ht_hole = false) {
  uint64_t top = uint64_t{1} << phys_bits;
  if (iova_limit != 0 && iova_limit < top) top = uint64_t{1} << (63 - __builtin_clzll(iova_limit));
  uint64_t start = std::max(top / 2, (ram_end(ram, ht_hole) + GiB - 1) / GiB * GiB);
  uint64_t end = top;
  if (ht_hole && start < kHtHoleEnd && end > kHtHoleStart) {
    if (start < kHtHoleStart)
      end = kHtHoleStart;
    else
      start = kHtHoleEnd;
  }
  return start >= end ? Window{end, 0} : Window{start, end - start};
}
inline uint64_t max_ram(uint32_t phys_bits, bool ht_hole = false) {
  const uint64_t top = uint64_t{1} << phys_bits;
  uint64_t usable = top - top / 8;
  // An address space that ends inside the hole (40 bits) has its window end below the hole instead.
  if (ht_hole && top > kHtHoleStart && top <= kHtHoleEnd) usable = kHtHoleStart - top / 8;
  const uint64_t from_4g = usable - (kHighRamStart - kLowRamMax);
  if (!ht_hole || kHighRamStart + (from_4g - kLowRamMax) <= kHtHoleStart) return from_4g;
  // RAM from 4 GiB stops at the hole; RAM from 1 TiB may go further, if the address space reaches that far.
  const uint64_t below_hole = kHtHoleStart - (kHighRamStart - kLowRamMax);
  const uint64_t from_1t = usable > kHtHoleEnd - kLowRamMax ? usable - (kHtHoleEnd - kLowRamMax) : 0;
  return std::max(below_hole, from_1t);
}
inline PciWindows pci_windows(uint64_t ram, uint32_t phys_bits, uint64_t iova_limit = 0, bool ht_hole = false) {
  PciWindows w;
  w.mmio64 = mmio64_window(ram, phys_bits, iova_limit, ht_hole);
  return w;
}

// [w.start, w.end()) as naturally aligned power-of-two blocks, largest first in address order, as
// variable MTRRs need them; at most `max` blocks (what does not fit is left to the page tables' PAT).
inline std::vector<Window> aligned_blocks(Window w, size_t max) {
  std::vector<Window> out;
  for (uint64_t at = w.start, end = w.end(); at < end && out.size() < max;) {
    uint64_t block = at == 0 ? uint64_t{1} << 63 : at & (~at + 1);  // the alignment of `at`
    while (block > end - at) block >>= 1;
    out.push_back({at, block});
    at += block;
  }
  return out;
}

// The ranges firmware marks uncacheable in the MTRRs: the 32-bit hole and the 64-bit window.
inline std::vector<Window> uncacheable_ranges(const PciWindows& w, size_t max = 8) {
  std::vector<Window> out = {{kLowRamMax, kHighRamStart - kLowRamMax}};
  for (Window b : aligned_blocks(w.mmio64, max - 1)) out.push_back(b);
  return out;
}

// GSIs 16..23 of the IOAPIC carry PCI INTx: slot s, pin p (0 = INTA) -> 16 + (s + p) % 8.
inline constexpr uint32_t kPciIntxGsiBase = 16;
inline constexpr uint32_t kIoapicPins = 24;
inline constexpr uint32_t pci_intx_gsi(uint32_t slot, uint32_t pin) { return kPciIntxGsiBase + (slot + pin) % 8; }

}  // namespace passvm::layout
