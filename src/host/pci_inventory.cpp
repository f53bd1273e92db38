#include "host/pci_inventory.h"

#include <algorithm>
#include <charconv>

#include <fmt/format.h>

#include "host/host_error.h"

namespace passvm::host {

namespace {

std::optional<unsigned long> hex_value(const std::optional<std::string>& text) {
  if (!text) return std::nullopt;
  std::string_view s = *text;
  if (s.starts_with("0x") || s.starts_with("0X")) s.remove_prefix(2);
  unsigned long value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value, 16);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

// The drivers VFIO accepts beside it in a group (those that manage no DMA: the kernel's
// driver_managed_dma). A PCI bridge's port driver is one; other class 0x06 functions with a driver are
// not: an ISA bridge on lpc_ich, a host bridge on an EDAC driver keep the group from VFIO.
bool is_host_driver(const HostDevice& d) {
  return !d.driver.empty() && d.driver != kVfioDriver && d.driver != "pci-stub" && d.driver != "pcieport";
}

}  // namespace

bool is_physical_function_of(const Sysroot& sysroot, const HostDevice& pf, const HostDevice& vf) {
  auto physfn = sysroot.resolve(vf.sysfs_dir() + "/physfn");
  return physfn && physfn == sysroot.resolve(pf.sysfs_dir());
}

KeptMember kept_by_host(const Sysroot& sysroot, const HostDevice& member, const HostDevice& dev) {
  if (member.is_bridge()) return KeptMember::chipset;
  if (is_physical_function_of(sysroot, member, dev)) return KeptMember::own_physical_function;
  return KeptMember::none;
}

std::string class_name(uint32_t class_code) {
  struct Entry {
    uint32_t code;  // base << 8 | sub
    const char* name;
  };
  static constexpr Entry table[] = {
      {0x0100, "SCSI controller"},    {0x0101, "IDE controller"},
      {0x0104, "RAID controller"},    {0x0106, "SATA controller"},
      {0x0107, "SAS controller"},     {0x0108, "NVMe controller"},
      {0x0180, "Storage controller"}, {0x0200, "Ethernet controller"},
      {0x0280, "Network controller"}, {0x0300, "VGA controller"},
      {0x0302, "3D controller"},      {0x0380, "Display controller"},
      {0x0401, "Audio device"},       {0x0403, "Audio device"},
      {0x0500, "RAM memory"},         {0x0600, "Host bridge"},
      {0x0601, "ISA bridge"},         {0x0604, "PCI bridge"},
      {0x0680, "Bridge"},             {0x0700, "Serial controller"},
      {0x0800, "PIC"},                {0x0805, "SD host controller"},
      {0x0806, "IOMMU"},              {0x0880, "System peripheral"},
      {0x0c03, "USB controller"},     {0x0c05, "SMBus"},
      {0x0d11, "Bluetooth"},          {0x1080, "Encryption controller"},
      {0x1180, "Signal processing"},  {0x1200, "Processing accelerator"},
      {0x00ff, "Unclassified device"},
  };
  uint32_t key = class_code >> 8;
  for (const auto& e : table) {
    if (e.code == key) return e.name;
  }
  for (const auto& e : table) {
    if ((e.code >> 8) == (key >> 8) && (e.code & 0xff) == 0x80) return e.name;
  }
  return fmt::format("class 0x{:04x}", key);
}

std::vector<HostDevice> scan_devices(const Sysroot& sysroot) {
  std::vector<HostDevice> devices;
  for (const auto& name : sysroot.list("/sys/bus/pci/devices")) {
    HostDevice d;
    try {
      d.address = PciAddress::parse(name);
    } catch (const HostError&) {
      continue;  // not a PCI function name: nothing we can act on
    }
    const std::string dir = d.sysfs_dir();
    d.vendor = static_cast<uint16_t>(hex_value(sysroot.read_line(dir + "/vendor")).value_or(0));
    d.device = static_cast<uint16_t>(hex_value(sysroot.read_line(dir + "/device")).value_or(0));
    d.class_code = static_cast<uint32_t>(hex_value(sysroot.read_line(dir + "/class")).value_or(0));
    d.driver = sysroot.link_name(dir + "/driver").value_or("");
    std::string override_value = sysroot.read_line(dir + "/driver_override").value_or("");
    d.driver_override = override_value == "(null)" ? "" : override_value;
    if (auto group = sysroot.link_name(dir + "/iommu_group")) {
      unsigned n = 0;
      auto [end, ec] = std::from_chars(group->data(), group->data() + group->size(), n);
      if (ec == std::errc() && end == group->data() + group->size()) d.iommu_group = n;
    }
    devices.push_back(std::move(d));
  }
  std::sort(devices.begin(), devices.end(),
            [](const HostDevice& a, const HostDevice& b) { return a.address < b.address; });
  return devices;
}

std::optional<HostDevice> find_device(const std::vector<HostDevice>& devices, const PciAddress& address) {
  for (const auto& d : devices) {
    if (d.address == address) return d;
  }
  return std::nullopt;
}

GroupStatus group_status(const std::vector<HostDevice>& devices, const HostDevice& device) {
  GroupStatus status;
  if (!device.iommu_group) return status;
  status.has_group = true;
  for (const auto& d : devices) {
    if (d.iommu_group != device.iommu_group) continue;
    status.members.push_back(d);
    if (d.address != device.address && is_host_driver(d)) status.blockers.push_back(d);
  }
  return status;
}

bool ready_for_passthrough(const std::vector<HostDevice>& devices, const HostDevice& device) {
  return device.on_vfio() && group_status(devices, device).viable();
}

}  // namespace passvm::host
