// acpi: AcpiTables, the table set of a passvm machine (see aml.h for the layer).
//
// Layout inside the window at layout::kAcpiStart: RSDP (v2) first, then FACS,
// DSDT, FADT (rev 6), MADT, MCFG and XSDT, each aligned as the spec wants.
// The DSDT declares \_S5 with devices::kS5SleepType, \_SB.PCI0 (ECAM host
// bridge with its windows and a _PRT routing every slot's INTA-D to its GSI
// from layout::pci_intx_gsi), the ECAM reservation (PNP0C02) and COM1.
#pragma once

#include "memory/layout.h"

#include <cstdint>
#include <span>
#include <vector>

namespace passvm {
class GuestMemory;
}

namespace passvm::acpi {

struct AcpiConfig {
  uint32_t vcpus = 1;  // one enabled local APIC each, APIC IDs 0..vcpus-1
  layout::PciWindows windows{};  // the host bridge's windows (_CRS)
  // Slots (bit n = slot n of bus 0) the guest may see devices arrive in and leave: each gets a DSDT device
  // with _EJ0, and \_GPE._E01 scans them through the registers at layout::kPciHotplugPort.
  uint32_t hotplug_slots = 0;
  // A virtio console at layout::kVirtioConsoleAddr, found by Linux's virtio_mmio driver (_HID LNRO0005).
  bool virtio_console = false;
  // The pvpanic port (layout::kPvpanicPort), found by Linux's pvpanic-mmio driver (_HID QEMU0001).
  bool pvpanic = false;
};

inline constexpr uint32_t kMaxVcpus = 255;
// build_tables(config, memory) puts the RSDP here, first in the ACPI area, whatever the tables hold: the
// boot path can point the kernel at it before the tables are written.
inline constexpr uint64_t kRsdpAddress = layout::kAcpiStart;  // xAPIC IDs in the MADT; 255 is the broadcast ID

// The DSDT alone, for tests and for dumping (`iasl -d`).
std::vector<uint8_t> build_dsdt(const AcpiConfig& config = {});

// Writes all tables into `window`, which the guest sees at guest-physical `window_gpa`, and returns
// the guest-physical address of the RSDP. Throws std::invalid_argument for a bad vCPU count and
// std::length_error if the window is too small.
uint64_t build_tables(const AcpiConfig& config, std::span<uint8_t> window, uint64_t window_gpa);

// Same, into guest RAM at layout::kAcpiStart (layout::kAcpiSize bytes).
uint64_t build_tables(const AcpiConfig& config, GuestMemory& memory);

}  // namespace passvm::acpi
