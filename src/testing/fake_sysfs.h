// testing: a fake host root (sysfs, procfs, /dev, /etc, /run) in a temp dir.
//
// Laid out like the real thing, symlinks included (bus/pci/devices -> devices/,
// driver and iommu_group links, class/block links below the controller), so
// the code under test follows the same links it follows on a real host.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "host/sysroot.h"

namespace passvm::testing {

class FakeSysfs {
 public:
  FakeSysfs();
  ~FakeSysfs();
  FakeSysfs(const FakeSysfs&) = delete;
  FakeSysfs& operator=(const FakeSysfs&) = delete;

  host::Sysroot sysroot() const { return host::Sysroot(root_); }
  const std::filesystem::path& root() const { return root_; }

  // A PCI function under pci0000:00. driver "" = unbound; group < 0 = no IOMMU group.
  void add_device(const std::string& address, const std::string& vendor, const std::string& device,
                  const std::string& class_code, const std::string& driver, int group);
  void add_driver(const std::string& name);
  void bind(const std::string& address, const std::string& driver);  // "" unbinds
  void set_override(const std::string& address, const std::string& driver);  // "" clears
  // A block device below a PCI device (parent "" = a disk, else a partition of parent).
  void add_block(const std::string& address, const std::string& name, const std::string& parent = "");
  // A device-mapper node stacked on the given block devices.
  void add_dm(const std::string& name, const std::vector<std::string>& slaves);

  void write(const std::string& host_path, const std::string& content) const;
  std::string read(const std::string& host_path) const;
  // A symlink at host path `link` pointing (relatively, as sysfs does) at host path `target`.
  void link(const std::string& link, const std::string& target) const;

 private:
  std::filesystem::path root_;
  int next_minor_ = 0;  // block devices get distinct MAJ:MIN numbers, as mountinfo names them
};

}  // namespace passvm::testing
