#include "testing/fake_sysfs.h"

#include <stdlib.h>

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace passvm::testing {

namespace fs = std::filesystem;

namespace {
const std::string kPciRoot = "/sys/devices/pci0000:00/";
}

FakeSysfs::FakeSysfs() {
  std::string tmpl = (fs::temp_directory_path() / "passvm-sysfs-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  root_ = tmpl;
  write("/sys/bus/pci/drivers_probe", "");
  write("/proc/self/mounts", "proc /proc proc rw 0 0\n");
  write("/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n");
  write("/proc/consoles", "ttyS0                -W- (EC p a)    4:64\n");
  fs::create_directories(root_ / "sys/bus/pci/devices");
  fs::create_directories(root_ / "sys/class/block");
}

FakeSysfs::~FakeSysfs() {
  std::error_code ec;
  fs::remove_all(root_, ec);
}

void FakeSysfs::write(const std::string& host_path, const std::string& content) const {
  fs::path p = root_ / host_path.substr(1);
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::trunc) << content;
}

std::string FakeSysfs::read(const std::string& host_path) const {
  std::ifstream in(root_ / host_path.substr(1));
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void FakeSysfs::link(const std::string& link, const std::string& target) const {
  fs::path l = root_ / link.substr(1);
  fs::create_directories(l.parent_path());
  fs::remove(l);
  fs::create_symlink(fs::path(target).lexically_relative(fs::path(link).parent_path()), l);
}

void FakeSysfs::add_driver(const std::string& name) {
  write("/sys/bus/pci/drivers/" + name + "/bind", "");
  write("/sys/bus/pci/drivers/" + name + "/unbind", "");
}

void FakeSysfs::add_device(const std::string& address, const std::string& vendor, const std::string& device,
                           const std::string& class_code, const std::string& driver, int group) {
  std::string dir = kPciRoot + address;
  write(dir + "/vendor", "0x" + vendor + "\n");
  write(dir + "/device", "0x" + device + "\n");
  write(dir + "/class", "0x" + class_code + "\n");
  write(dir + "/driver_override", "(null)\n");
  write(dir + "/modalias", "pci:v0000" + vendor + "d0000" + device + "sv00001AF4sd00001100bc01sc08i02\n");
  link("/sys/bus/pci/devices/" + address, dir);
  if (group >= 0) {
    std::string gdir = "/sys/kernel/iommu_groups/" + std::to_string(group);
    fs::create_directories(root_ / (gdir.substr(1) + "/devices"));
    link(dir + "/iommu_group", gdir);
    link(gdir + "/devices/" + address, dir);
  }
  bind(address, driver);
}

void FakeSysfs::bind(const std::string& address, const std::string& driver) {
  std::string dir = kPciRoot + address;
  fs::remove(root_ / (dir.substr(1) + "/driver"));
  if (driver.empty()) return;
  add_driver(driver);
  link(dir + "/driver", "/sys/bus/pci/drivers/" + driver);
}

void FakeSysfs::set_override(const std::string& address, const std::string& driver) {
  write(kPciRoot + address + "/driver_override", (driver.empty() ? "(null)" : driver) + "\n");
}

void FakeSysfs::add_block(const std::string& address, const std::string& name, const std::string& parent) {
  std::string disk_dir = kPciRoot + address + "/nvme/nvme0/";
  std::string dir = parent.empty() ? disk_dir + name : disk_dir + parent + "/" + name;
  std::string number = "259:" + std::to_string(next_minor_++);
  write(dir + "/dev", number + "\n");
  link("/sys/class/block/" + name, dir);
  link("/sys/dev/block/" + number, dir);
}

void FakeSysfs::add_dm(const std::string& name, const std::vector<std::string>& slaves) {
  std::string dir = "/sys/devices/virtual/block/" + name;
  write(dir + "/dm/name", "vg-root\n");
  fs::create_directories(root_ / (dir.substr(1) + "/slaves"));
  std::string number = "253:" + std::to_string(next_minor_++);
  write(dir + "/dev", number + "\n");
  for (const auto& s : slaves) {
    auto target = fs::read_symlink(root_ / ("sys/class/block/" + s));
    std::string slave_dir = (fs::path("/sys/class/block") / target).lexically_normal().string();
    link(dir + "/slaves/" + s, slave_dir);
    link(slave_dir + "/holders/" + name, dir);
  }
  link("/sys/class/block/" + name, dir);
  link("/sys/dev/block/" + number, dir);
}

}  // namespace passvm::testing
