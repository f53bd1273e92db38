// vfio: what the host's sysfs says about a device before VFIO is asked.
//
// The kernel's answer to a bad setup is a bare errno (ENOENT, EPERM, EINVAL).
// These checks run first and turn each common mistake into one line that names
// the device and the fix: wrong driver, IOMMU off, a sibling in the IOMMU group
// still driven by the host. They read sysfs only, so tests point them at a
// fake tree.
#pragma once

#include <string>
#include <vector>

#include "vfio/bdf.h"

namespace passvm::vfio {

// Checks that the device exists, is bound to vfio-pci and has an IOMMU group; returns the group
// number. Throws VfioError naming the problem and the command that fixes it.
int check_host_device(const Bdf& bdf, const std::string& sysfs_root = "/sys");

struct GroupMember {
  std::string bdf;
  std::string driver;  // "" when unbound
};

// The other devices of the group that keep it from being viable: bound to a host driver
// (not vfio-pci, pci-stub or a bridge's pcieport).
std::vector<GroupMember> group_blockers(int group, const std::string& self, const std::string& sysfs_root = "/sys");

// The one-line error for a group VFIO reports as not viable.
std::string not_viable_message(const Bdf& bdf, int group, const std::string& sysfs_root = "/sys");

// The first method in /sys/bus/pci/devices/BDF/reset_method ("flr", "pm", "bus"...), or "" when absent.
std::string reset_method(const Bdf& bdf, const std::string& sysfs_root = "/sys");

}  // namespace passvm::vfio
