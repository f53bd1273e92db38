// host: what the host's PCI devices are and who drives them, read from sysfs.
//
// One HostDevice per /sys/bus/pci/devices entry: identity, class, current
// driver, driver_override and IOMMU group. Group viability is computed here
// because VFIO only hands out a group whose every member is off host drivers:
// the classic "group N is not viable" failure is a sibling function (a GPU's
// audio part) left on its host driver, so the blockers are named, not counted.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "host/pci_address.h"
#include "host/sysroot.h"

namespace passvm::host {

inline constexpr std::string_view kVfioDriver = "vfio-pci";

struct HostDevice {
  PciAddress address;
  uint16_t vendor = 0;
  uint16_t device = 0;
  uint32_t class_code = 0;  // 24 bits: base class, subclass, prog-if
  std::string driver;  // empty when no driver is bound
  std::string driver_override;  // empty when unset ("(null)" in sysfs)
  std::optional<unsigned> iommu_group;

  std::string sysfs_dir() const { return "/sys/bus/pci/devices/" + address.str(); }
  // Bridges stay on their host driver (pcieport) without breaking a group.
  bool is_bridge() const { return (class_code >> 16) == 0x06; }
  bool on_vfio() const { return driver == kVfioDriver; }
  // Set aside for passthrough: bound to vfio-pci, or marked to bind there next.
  bool reserved() const { return on_vfio() || driver_override == kVfioDriver; }
};

// Whether `pf` is the physical function of `vf` (its `physfn` link), a virtual function of it.
bool is_physical_function_of(const Sysroot& sysroot, const HostDevice& pf, const HostDevice& vf);

// Why a member of `dev`'s IOMMU group stays with the host whatever is reserved: a chipset function (an ISA
// or host bridge, whose driver manages DMA the kernel does not let VFIO share), or `dev`'s own physical
// function (reserve refuses a PF with VFs: they would go). Such a member makes the group unusable; the fix
// is the slot or the platform, never a reservation.
enum class KeptMember { none, chipset, own_physical_function };
KeptMember kept_by_host(const Sysroot& sysroot, const HostDevice& member, const HostDevice& dev);

// "NVMe controller", "Ethernet controller", ... or "class 0xBBSS" for codes outside the table.
std::string class_name(uint32_t class_code);

// Every device under /sys/bus/pci/devices, sorted by address.
std::vector<HostDevice> scan_devices(const Sysroot& sysroot);
std::optional<HostDevice> find_device(const std::vector<HostDevice>& devices, const PciAddress& address);

struct GroupStatus {
  bool has_group = false;
  std::vector<HostDevice> members;  // the whole group, the device itself included
  std::vector<HostDevice> blockers;  // other members still on a host driver
  bool viable() const { return has_group && blockers.empty(); }
};

GroupStatus group_status(const std::vector<HostDevice>& devices, const HostDevice& device);
// The device is on vfio-pci and its group is viable: a VMM can open it now.
bool ready_for_passthrough(const std::vector<HostDevice>& devices, const HostDevice& device);

}  // namespace passvm::host
