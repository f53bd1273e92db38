#include "host/host_usage.h"

#include <gtest/gtest.h>

#include "testing/fake_host.h"

namespace passvm::host {
namespace {

class HostUsage : public ::testing::Test {
 protected:
  void SetUp() override { testing::populate_host(fake); }
  std::vector<std::string> uses(const std::string& a) {
    auto d = find_device(scan_devices(fake.sysroot()), PciAddress::parse(a));
    return host_uses(fake.sysroot(), d.value());
  }
  testing::FakeSysfs fake;
};

TEST_F(HostUsage, UnmountedDiskIsFree) { EXPECT_TRUE(uses("0000:00:03.0").empty()); }

TEST_F(HostUsage, MountedPartitionBlocks) {
  fake.write("/proc/self/mounts", "proc /proc proc rw 0 0\n/dev/nvme0n1p1 /boot ext4 rw 0 0\n");
  auto u = uses("0000:00:03.0");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_NE(u[0].find("/dev/nvme0n1p1 is mounted on /boot (ext4)"), std::string::npos) << u[0];
  EXPECT_TRUE(uses("0000:00:04.0").empty());  // other devices unaffected
}

TEST_F(HostUsage, MountThroughSymlinkAndDeviceMapperBlocks) {
  fake.add_dm("dm-0", {"nvme0n1p2"});
  fake.link("/dev/mapper/vg-root", "/dev/dm-0");
  fake.write("/proc/self/mounts", "/dev/mapper/vg-root / ext4 rw 0 0\n");
  auto u = uses("0000:00:03.0");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_NE(u[0].find("through nvme0n1p2"), std::string::npos) << u[0];
}

TEST_F(HostUsage, SwapBlocks) {
  fake.write("/proc/swaps", "Filename Type Size Used Priority\n/dev/nvme0n1p2 partition 1024 0 -2\n");
  auto u = uses("0000:00:03.0");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_NE(u[0].find("swap"), std::string::npos);
}

TEST_F(HostUsage, BootVgaBlocksOnlyWithVtConsole) {
  EXPECT_TRUE(uses("0000:00:01.0").empty());  // console is ttyS0 only
  fake.write("/proc/consoles", "tty0 -WU (EC p  ) 4:1\nttyS0 -W- (E p a) 4:64\n");
  ASSERT_EQ(uses("0000:00:01.0").size(), 1u);
}

TEST_F(HostUsage, SerialConsoleOnPciCardBlocks) {
  fake.add_device("0000:00:08.0", "1b36", "0002", "070002", "serial", 6);
  fake.link("/sys/class/tty/ttyS4/device", "/sys/devices/pci0000:00/0000:00:08.0");
  fake.write("/proc/consoles", "ttyS4 -W- (EC p a) 4:68\n");
  auto u = uses("0000:00:08.0");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_NE(u[0].find("console ttyS4"), std::string::npos);
}

}  // namespace
}  // namespace passvm::host
