#include "host/pci_inventory.h"

#include <gtest/gtest.h>

#include "testing/fake_host.h"

namespace passvm::host {
namespace {

class Inventory : public ::testing::Test {
 protected:
  void SetUp() override { testing::populate_host(fake); }
  HostDevice get(const std::string& a) {
    auto d = find_device(scan_devices(fake.sysroot()), PciAddress::parse(a));
    EXPECT_TRUE(d.has_value()) << a;
    return d.value_or(HostDevice{});
  }
  testing::FakeSysfs fake;
};

TEST_F(Inventory, ReadsIdentityDriverAndGroup) {
  auto devices = scan_devices(fake.sysroot());
  ASSERT_EQ(devices.size(), 8u);
  auto nvme = get("0000:00:03.0");
  EXPECT_EQ(nvme.vendor, 0x1b36);
  EXPECT_EQ(nvme.device, 0x0010);
  EXPECT_EQ(nvme.class_code, 0x010802u);
  EXPECT_EQ(nvme.driver, "nvme");
  EXPECT_EQ(nvme.driver_override, "");
  EXPECT_EQ(nvme.iommu_group, 2u);
  EXPECT_FALSE(nvme.reserved());
  EXPECT_EQ(get("0000:00:05.0").driver, "");
}

TEST_F(Inventory, SortedByAddressAndSkipsNonPciNames) {
  fake.write("/sys/bus/pci/devices/garbage/vendor", "0x1\n");
  auto devices = scan_devices(fake.sysroot());
  ASSERT_EQ(devices.size(), 8u);
  for (size_t i = 1; i < devices.size(); ++i) EXPECT_LT(devices[i - 1].address, devices[i].address);
}

TEST_F(Inventory, ReservedFollowsOverrideOrBinding) {
  fake.set_override("0000:00:03.0", "vfio-pci");
  EXPECT_TRUE(get("0000:00:03.0").reserved());
  EXPECT_FALSE(get("0000:00:03.0").on_vfio());
  fake.set_override("0000:00:04.0", "");
  fake.bind("0000:00:04.0", "vfio-pci");
  EXPECT_TRUE(get("0000:00:04.0").reserved());
}

TEST_F(Inventory, ClassNames) {
  EXPECT_EQ(class_name(0x010802), "NVMe controller");
  EXPECT_EQ(class_name(0x020000), "Ethernet controller");
  EXPECT_EQ(class_name(0x060400), "PCI bridge");
  EXPECT_EQ(class_name(0x010900), "Storage controller");  // unknown subclass: the base class's "other"
  EXPECT_EQ(class_name(0x130000), "class 0x1300");
}

TEST_F(Inventory, ReadyNeedsVfioAndAViableGroup) {
  auto devices = scan_devices(fake.sysroot());
  EXPECT_FALSE(ready_for_passthrough(devices, get("0000:00:03.0")));  // on nvme
  fake.bind("0000:00:03.0", "vfio-pci");
  devices = scan_devices(fake.sysroot());
  EXPECT_TRUE(ready_for_passthrough(devices, get("0000:00:03.0")));
}

TEST_F(Inventory, GroupBlockersAreHostDriversButNotBridges) {
  fake.bind("0000:00:06.0", "vfio-pci");
  auto devices = scan_devices(fake.sysroot());
  auto gpu = get("0000:00:06.0");
  auto status = group_status(devices, gpu);
  EXPECT_EQ(status.members.size(), 3u);
  ASSERT_EQ(status.blockers.size(), 1u);
  EXPECT_EQ(status.blockers[0].address.str(), "0000:00:06.1");
  EXPECT_FALSE(ready_for_passthrough(devices, gpu));

  fake.bind("0000:00:06.1", "");  // driverless sibling no longer blocks
  devices = scan_devices(fake.sysroot());
  EXPECT_TRUE(group_status(devices, gpu).viable());
  EXPECT_TRUE(ready_for_passthrough(devices, gpu));
}

TEST_F(Inventory, NoGroupIsNeverReady) {
  fake.add_device("0000:00:07.0", "8086", "10d3", "020000", "vfio-pci", -1);
  auto devices = scan_devices(fake.sysroot());
  auto d = get("0000:00:07.0");
  EXPECT_FALSE(d.iommu_group.has_value());
  EXPECT_FALSE(group_status(devices, d).has_group);
  EXPECT_FALSE(ready_for_passthrough(devices, d));
}

}  // namespace
}  // namespace passvm::host
