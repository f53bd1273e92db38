// The DSDT: the guest's device tree in AML.
#include <fmt/format.h>

#include "acpi/aml.h"
#include "acpi/table_writer.h"
#include "acpi/tables.h"
#include "devices/acpi_pm.h"
#include "devices/cmos_rtc.h"
#include "devices/pvpanic.h"
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

// ACPI PCI hotplug, as Linux's acpiphp expects it: one device per slot with _ADR and _EJ0. A GPE runs
// PCNT, which reads which slots gained a device (PCIU, cleared by the read) and which the host wants
// back (PCID), and notifies the slot's device: 1 (device check) makes the guest scan the slot, 3 (eject
// request) makes it let go of the device and call _EJ0, which tells the host through B0EJ.
std::vector<Bytes> pci_hotplug(uint32_t slots) {
  std::vector<Bytes> terms;
  if (slots == 0) return terms;
  terms.push_back(operation_region_io("PCST", layout::kPciHotplugPort, 12));
  terms.push_back(field_dwords("PCST", {"PCIU", "PCID", "B0EJ"}));
  terms.push_back(method("PCEJ", 1, true, {store(shift_left(integer(1), arg(0)), name_string("B0EJ"))}));
  std::vector<Bytes> scan{store(name_string("PCIU"), local(0)), store(name_string("PCID"), local(1))};
  for (uint32_t slot = 0; slot < 32; slot++) {
    if (!(slots & (1u << slot))) continue;
    std::string dev = fmt::format("S{:02X}", slot);
    terms.push_back(device(dev, {name("_ADR", integer(uint64_t{slot} << 16)), name("_SUN", integer(slot)),
                                 method("_EJ0", 1, false, {call("PCEJ", {integer(slot)})})}));
    scan.push_back(if_then(and_of(local(0), integer(1u << slot)), {notify(dev, integer(1))}));
    scan.push_back(if_then(and_of(local(1), integer(1u << slot)), {notify(dev, integer(3))}));
  }
  terms.push_back(method("PCNT", 0, true, scan));
  return terms;
}

Bytes pci_host_bridge(const layout::PciWindows& w, uint32_t hotplug_slots) {
  ResourceTemplate crs;
  crs.bus_numbers(0, static_cast<uint16_t>(layout::kEcamBuses - 1))
      .io(layout::kPciConfigAddrPort, 8)
      .io_window(0x0000, layout::kPciConfigAddrPort - 1)
      // Only where passvm places I/O BARs: Linux assigns a hot-added device's BARs itself, from these
      // windows, and an I/O BAR elsewhere would be left unmapped.
      .io_window(static_cast<uint16_t>(w.io.start), static_cast<uint16_t>(w.io.end() - 1))
      .memory32_window(static_cast<uint32_t>(w.mmio32.start), static_cast<uint32_t>(w.mmio32.end() - 1))
      .memory64_window(w.mmio64.start, w.mmio64.end() - 1);

  // ECAM must be reserved as a motherboard resource, or Linux declines to use it and loses
  // extended config space.
  ResourceTemplate ecam;
  ecam.memory32_fixed(static_cast<uint32_t>(layout::kEcamStart), static_cast<uint32_t>(layout::kEcamSize));
  // The hot-plug registers (slots up, slots down, eject: three dwords), so nothing else is given them.
  if (hotplug_slots) ecam.io(layout::kPciHotplugPort, 12);

  std::vector<Bytes> terms{
                            name("_HID", eisa_id("PNP0A08")),
                            name("_CID", eisa_id("PNP0A03")),
                            name("_SEG", integer(0)),
                            name("_BBN", integer(0)),
                            name("_UID", integer(0)),
                            name("_CRS", crs.build()),
                            pci_routing_table(),
                            device("PDRC", {name("_HID", eisa_id("PNP0C02")), name("_UID", integer(1)),
                                            name("_CRS", ecam.build())}),
                        };
  for (auto& t : pci_hotplug(hotplug_slots)) terms.push_back(std::move(t));
  return device("PCI0", terms);
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

// The CMOS RTC, as on any PC: a guest that finds no PNP0B00 device registers the clock on its own, from
// what it assumes a PC has, and other systems may not look for it at all.
Bytes rtc() {
  ResourceTemplate crs;
  crs.io(layout::kRtcPort, devices::CmosRtc::kSize).irq(static_cast<uint8_t>(layout::kRtcIrq));
  return device("RTC", {
                           name("_HID", eisa_id("PNP0B00")),
                           name("_CRS", crs.build()),
                       });
}

// The virtio console's registers and interrupt. "LNRO0005" is the ACPI ID of a virtio-mmio device, which
// Linux's virtio_mmio driver matches; the device type comes from its registers.
Bytes virtio_console() {
  ResourceTemplate crs;
  crs.memory32_fixed(static_cast<uint32_t>(layout::kVirtioConsoleAddr), static_cast<uint32_t>(layout::kVirtioConsoleSize))
      .irq(static_cast<uint8_t>(layout::kVirtioConsoleIrq));
  return device("VCON", {
                            name("_HID", string("LNRO0005")),
                            name("_UID", integer(0)),
                            name("_CRS", crs.build()),
                        });
}

// QEMU's pvpanic, whose protocol Linux's pvpanic-mmio driver speaks over the port or MMIO range in _CRS.
Bytes pvpanic() {
  ResourceTemplate crs;
  crs.io(layout::kPvpanicPort, static_cast<uint8_t>(devices::Pvpanic::kSize));
  return device("PEVT", {
                            name("_HID", string("QEMU0001")),
                            name("_CRS", crs.build()),
                            name("_STA", integer(0x0f)),
                        });
}

}  // namespace

std::vector<uint8_t> build_dsdt(const AcpiConfig& config) {
  Bytes body;
  auto add = [&](const Bytes& b) { body.insert(body.end(), b.begin(), b.end()); };
  // SLP_TYPa, SLP_TYPb, reserved, reserved: what AcpiPm compares on SLP_EN.
  add(name("\\_S5", package({integer(devices::kS5SleepType), integer(devices::kS5SleepType), integer(0), integer(0)})));
  std::vector<Bytes> devices{pci_host_bridge(config.windows, config.hotplug_slots), com1(), rtc()};
  if (config.virtio_console) devices.push_back(virtio_console());
  if (config.pvpanic) devices.push_back(pvpanic());
  add(scope("\\_SB", devices));
  if (config.hotplug_slots != 0)
    add(scope("\\_GPE", {method(fmt::format("_E{:02X}", devices::kGpePciHotplug), 0, false,
                                  {call("\\_SB.PCI0.PCNT")})}));
  // Revision 2: integers are 64 bits wide, needed for the 64-bit window.
  return make_table("DSDT", 2, body);
}

}  // namespace passvm::acpi
