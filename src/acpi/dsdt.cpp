// The DSDT: the guest's device tree in AML.
#include "acpi/aml.h"
#include "acpi/table_writer.h"
#include "acpi/tables.h"
#include "devices/acpi_pm.h"
#include "memory/layout.h"

namespace passvm::acpi {

namespace {

using namespace aml;

Bytes pci_routing_table() {
  std::vector<Bytes> entries;
  for (uint32_t slot = 1; slot < 32; slot++) {
    for (uint32_t pin = 0; pin < 4; pin++) {
      // Direct GSI form: source Zero, source index = the GSI.
      entries.push_back(package({integer(uint64_t{slot} << 16 | 0xffff), integer(pin), integer(0),
                                 integer(layout::pci_intx_gsi(slot, pin))}));
    }
  }
  return name("_PRT", package(entries));
}

Bytes pci_host_bridge(const layout::PciWindows& w) {
  ResourceTemplate crs;
  crs.bus_numbers(0, static_cast<uint16_t>(layout::kEcamBuses - 1))
      .io(layout::kPciConfigAddrPort, 8)
      .io_window(0x0000, layout::kPciConfigAddrPort - 1)
      .io_window(0x0d00, 0xffff)
      .memory32_window(static_cast<uint32_t>(w.mmio32.start), static_cast<uint32_t>(w.mmio32.end() - 1))
      .memory64_window(w.mmio64.start, w.mmio64.end() - 1);

  // ECAM must be reserved as a motherboard resource, or Linux declines to use it and loses
  // extended config space.
  ResourceTemplate ecam;
  ecam.memory32_fixed(static_cast<uint32_t>(layout::kEcamStart), static_cast<uint32_t>(layout::kEcamSize));

  return device("PCI0", {
                            name("_HID", eisa_id("PNP0A08")),
                            name("_CID", eisa_id("PNP0A03")),
                            name("_SEG", integer(0)),
                            name("_BBN", integer(0)),
                            name("_UID", integer(0)),
                            name("_CRS", crs.build()),
                            pci_routing_table(),
                            device("PDRC", {name("_HID", eisa_id("PNP0C02")), name("_UID", integer(1)),
                                            name("_CRS", ecam.build())}),
                        });
}

Bytes com1() {
  ResourceTemplate crs;
  crs.io(layout::kCom1Port, 8).irq(static_cast<uint8_t>(layout::kCom1Irq));
  return device("COM1", {
                            name("_HID", eisa_id("PNP0501")),
                            name("_UID", integer(1)),
                            method("_STA", 0, false, {return_value(integer(0x0f))}),  // present, enabled, shown
                            name("_CRS", crs.build()),
                        });
}

}  // namespace

std::vector<uint8_t> build_dsdt(const layout::PciWindows& windows) {
  Bytes body;
  auto add = [&](const Bytes& b) { body.insert(body.end(), b.begin(), b.end()); };
  // SLP_TYPa, SLP_TYPb, reserved, reserved: what AcpiPm compares on SLP_EN.
  add(name("\\_S5", package({integer(devices::kS5SleepType), integer(devices::kS5SleepType), integer(0), integer(0)})));
  add(scope("\\_SB", {pci_host_bridge(windows), com1()}));
  // Revision 2: integers are 64 bits wide, needed for the 64-bit window.
  return make_table("DSDT", 2, body);
}

}  // namespace passvm::acpi
