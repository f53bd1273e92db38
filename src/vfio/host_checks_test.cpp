#include "vfio/host_checks.h"

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <unistd.h>

#include "testing/fake_sysfs.h"
#include "vfio/device.h"

namespace passvm::vfio {
namespace {
namespace fs = std::filesystem;

// The project's fake host root (testing/fake_sysfs.h); these checks read its /sys.
class HostChecks : public ::testing::Test {
 protected:
  void add_device(const std::string& bdf, const std::string& driver, int group) {
    if (!driver.empty()) fake_.add_driver(driver);
    fake_.add_device(bdf, "1234", "5678", "000000", driver, group);
  }

  std::string error_of(const std::string& bdf) {
    try {
      check_host_device(parse_bdf(bdf), sysfs());
    } catch (const VfioError& e) {
      return e.what();
    }
    return "(no error)";
  }

  std::string sysfs() const { return (fake_.root() / "sys").string(); }
  passvm::testing::FakeSysfs fake_;
};

TEST_F(HostChecks, AcceptsDeviceOnVfioPciAndReturnsGroup) {
  add_device("0000:00:03.0", "vfio-pci", 7);
  EXPECT_EQ(check_host_device(parse_bdf("0/3/0"), sysfs()), 7);
}

TEST_F(HostChecks, MissingDevice) {
  std::string e = error_of("0000:00:09.0");
  EXPECT_NE(e.find("0000:00:09.0: no such PCI device"), std::string::npos) << e;
}

TEST_F(HostChecks, HostDriverNamedWithFix) {
  add_device("0000:00:03.0", "nvme", 3);
  std::string e = error_of("00:03.0");
  EXPECT_NE(e.find("host driver 'nvme'"), std::string::npos) << e;
  EXPECT_NE(e.find("passvm reserve 0000:00:03.0"), std::string::npos) << e;
}

TEST_F(HostChecks, UnboundDevice) {
  add_device("0000:00:03.0", "", 3);
  EXPECT_NE(error_of("00:03.0").find("no driver"), std::string::npos);
}

TEST_F(HostChecks, NoIommuGroupMeansIommuOff) {
  add_device("0000:00:03.0", "vfio-pci", -1);
  std::string e = error_of("00:03.0");
  EXPECT_NE(e.find("intel_iommu=on"), std::string::npos) << e;
  EXPECT_NE(e.find("AMD-Vi"), std::string::npos) << e;
  EXPECT_EQ(e.find("amd_iommu=on"), std::string::npos) << "not a value amd_iommu= takes: " << e;
}

TEST_F(HostChecks, NotViableListsSiblingsWithDriversAndCommand) {
  add_device("0000:01:00.0", "vfio-pci", 5);
  add_device("0000:01:00.1", "snd_hda_intel", 5);
  add_device("0000:00:01.0", "pcieport", 5);  // bridges do not block viability
  add_device("0000:01:00.2", "", 5);          // nor do unbound devices
  auto blockers = group_blockers(5, "0000:01:00.0", sysfs());
  ASSERT_EQ(blockers.size(), 1u);
  EXPECT_EQ(blockers[0].bdf, "0000:01:00.1");
  std::string msg = not_viable_message(parse_bdf("01:00.0"), 5, sysfs());
  EXPECT_NE(msg.find("group 5 is not viable"), std::string::npos) << msg;
  EXPECT_NE(msg.find("0000:01:00.1 (snd_hda_intel)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("`passvm reserve 0000:01:00.1`"), std::string::npos) << msg;
}

TEST_F(HostChecks, ResetMethodIsFirstListed) {
  add_device("0000:00:03.0", "vfio-pci", 1);
  EXPECT_EQ(reset_method(parse_bdf("00:03.0"), sysfs()), "");
  fake_.write("/sys/bus/pci/devices/0000:00:03.0/reset_method", "flr bus\n");
  EXPECT_EQ(reset_method(parse_bdf("00:03.0"), sysfs()), "flr");
}

}  // namespace
}  // namespace passvm::vfio
