#include "vfio/host_checks.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <unistd.h>

#include "vfio/device.h"

namespace passvm::vfio {
namespace {
namespace fs = std::filesystem;

// A throwaway sysfs tree: devices with driver and iommu_group symlinks as the kernel makes them.
class FakeSysfs : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("passvm-sysfs-" + std::to_string(getpid()) + "-" +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(root_);
    fs::create_directories(root_ / "bus/pci/devices");
  }
  void TearDown() override { fs::remove_all(root_); }

  void add_device(const std::string& bdf, const std::string& driver, int group) {
    fs::path dev = root_ / "devices/pci0000:00" / bdf;
    fs::create_directories(dev);
    fs::create_directory_symlink(dev, root_ / "bus/pci/devices" / bdf);
    if (!driver.empty()) {
      fs::create_directories(root_ / "bus/pci/drivers" / driver);
      fs::create_directory_symlink(root_ / "bus/pci/drivers" / driver, dev / "driver");
    }
    if (group >= 0) {
      fs::path g = root_ / "kernel/iommu_groups" / std::to_string(group);
      fs::create_directories(g / "devices");
      fs::create_directory_symlink(g, dev / "iommu_group");
      fs::create_directory_symlink(dev, g / "devices" / bdf);
    }
  }

  std::string error_of(const std::string& bdf) {
    try {
      check_host_device(Bdf::parse(bdf), root_.string());
    } catch (const VfioError& e) {
      return e.what();
    }
    return "(no error)";
  }

  fs::path root_;
};

TEST_F(FakeSysfs, AcceptsDeviceOnVfioPciAndReturnsGroup) {
  add_device("0000:00:03.0", "vfio-pci", 7);
  EXPECT_EQ(check_host_device(Bdf::parse("0/3/0"), root_.string()), 7);
}

TEST_F(FakeSysfs, MissingDevice) {
  std::string e = error_of("0000:00:09.0");
  EXPECT_NE(e.find("0000:00:09.0: no such PCI device"), std::string::npos) << e;
}

TEST_F(FakeSysfs, HostDriverNamedWithFix) {
  add_device("0000:00:03.0", "nvme", 3);
  std::string e = error_of("00:03.0");
  EXPECT_NE(e.find("host driver 'nvme'"), std::string::npos) << e;
  EXPECT_NE(e.find("passvm reserve 0000:00:03.0"), std::string::npos) << e;
}

TEST_F(FakeSysfs, UnboundDevice) {
  add_device("0000:00:03.0", "", 3);
  EXPECT_NE(error_of("00:03.0").find("no driver"), std::string::npos);
}

TEST_F(FakeSysfs, NoIommuGroupMeansIommuOff) {
  add_device("0000:00:03.0", "vfio-pci", -1);
  std::string e = error_of("00:03.0");
  EXPECT_NE(e.find("intel_iommu=on"), std::string::npos) << e;
  EXPECT_NE(e.find("amd_iommu=on"), std::string::npos) << e;
}

TEST_F(FakeSysfs, NotViableListsSiblingsWithDriversAndCommand) {
  add_device("0000:01:00.0", "vfio-pci", 5);
  add_device("0000:01:00.1", "snd_hda_intel", 5);
  add_device("0000:00:01.0", "pcieport", 5);  // bridges do not block viability
  add_device("0000:01:00.2", "", 5);          // nor do unbound devices
  auto blockers = group_blockers(5, "0000:01:00.0", root_.string());
  ASSERT_EQ(blockers.size(), 1u);
  EXPECT_EQ(blockers[0].bdf, "0000:01:00.1");
  std::string msg = not_viable_message(Bdf::parse("01:00.0"), 5, root_.string());
  EXPECT_NE(msg.find("group 5 is not viable"), std::string::npos) << msg;
  EXPECT_NE(msg.find("0000:01:00.1 (snd_hda_intel)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("`passvm reserve 0000:01:00.1`"), std::string::npos) << msg;
}

TEST_F(FakeSysfs, ResetMethodIsFirstListed) {
  add_device("0000:00:03.0", "vfio-pci", 1);
  EXPECT_EQ(reset_method(Bdf::parse("00:03.0"), root_.string()), "");
  std::ofstream(root_ / "bus/pci/devices/0000:00:03.0/reset_method") << "flr bus\n";
  EXPECT_EQ(reset_method(Bdf::parse("00:03.0"), root_.string()), "flr");
}

}  // namespace
}  // namespace passvm::vfio
