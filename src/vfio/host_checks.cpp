#include "vfio/host_checks.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "vfio/device.h"

namespace passvm::vfio {
namespace fs = std::filesystem;

namespace {

std::string link_name(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_symlink(p, ec)) return {};
  return fs::read_symlink(p, ec).filename().string();
}

std::string device_dir(const std::string& sysfs_root, const std::string& bdf) {
  return sysfs_root + "/bus/pci/devices/" + bdf;
}

}  // namespace

int check_host_device(const Bdf& bdf, const std::string& sysfs_root) {
  std::string name = bdf.str();
  fs::path dir = device_dir(sysfs_root, name);
  std::error_code ec;
  if (!fs::exists(dir, ec))
    throw VfioError(fmt::format("{}: no such PCI device on this host; list the devices with `lspci -D`", name));
  std::string driver = link_name(dir / "driver");
  if (driver.empty())
    throw VfioError(fmt::format("{}: not bound to vfio-pci (no driver); claim it with `passvm reserve {}`", name, name));
  if (driver != "vfio-pci")
    throw VfioError(fmt::format("{}: bound to host driver '{}', not vfio-pci; hand it over with `passvm reserve {}`",
                                name, driver, name));
  std::string group = link_name(dir / "iommu_group");
  if (group.empty())
    throw VfioError(fmt::format("{}: no IOMMU group, the IOMMU is off; turn on VT-d (Intel) or AMD-Vi/IOMMU (AMD) "
                                "in the firmware setup, and on Intel add intel_iommu=on to the host kernel command "
                                "line (AMD's is on by default: remove amd_iommu=off or iommu=off if there), then "
                                "reboot",
                                name));
  int n = 0;
  try {
    n = std::stoi(group);
  } catch (const std::exception&) {
    throw VfioError(fmt::format("{}: unexpected IOMMU group name '{}' in sysfs", name, group));
  }
  return n;
}

std::vector<GroupMember> group_blockers(int group, const std::string& self, const std::string& sysfs_root) {
  std::vector<GroupMember> out;
  fs::path dir = fmt::format("{}/kernel/iommu_groups/{}/devices", sysfs_root, group);
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string bdf = entry.path().filename().string();
    if (bdf == self) continue;
    std::string driver = link_name(device_dir(sysfs_root, bdf) + "/driver");
    if (driver.empty() || driver == "vfio-pci" || driver == "pci-stub" || driver == "pcieport") continue;
    out.push_back({bdf, driver});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.bdf < b.bdf; });
  return out;
}

std::string not_viable_message(const Bdf& bdf, int group, const std::string& sysfs_root) {
  auto blockers = group_blockers(group, bdf.str(), sysfs_root);
  if (blockers.empty())
    return fmt::format("{}: IOMMU group {} is not viable; bind every device in /sys/kernel/iommu_groups/{}/devices "
                       "to vfio-pci",
                       bdf.str(), group, group);
  std::string list, cmd;
  for (const auto& b : blockers) {
    list += fmt::format("{}{} ({})", list.empty() ? "" : ", ", b.bdf, b.driver);
    cmd += " " + b.bdf;
  }
  return fmt::format("{}: IOMMU group {} is not viable, the host still drives {}; reserve them too with "
                     "`passvm reserve{}`",
                     bdf.str(), group, list, cmd);
}

std::string reset_method(const Bdf& bdf, const std::string& sysfs_root) {
  std::ifstream in(device_dir(sysfs_root, bdf.str()) + "/reset_method");
  std::string first;
  if (in) in >> first;
  return first;
}

}  // namespace passvm::vfio
