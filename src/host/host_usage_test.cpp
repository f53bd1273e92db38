#include "host/host_usage.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "testing/fake_host.h"

namespace passvm::host {
namespace {

class HostUsage : public ::testing::Test {
 protected:
  void SetUp() override { testing::populate_host(fake); }
  std::vector<std::string> uses(const std::string& a) {
    auto d = find_device(scan_devices(fake.sysroot()), PciAddress::parse(a));
    return host_uses(fake.sysroot(), d.value(), host_routes(fake.sysroot()));
  }
  std::vector<std::string> cautions(const std::string& a) {
    auto d = find_device(scan_devices(fake.sysroot()), PciAddress::parse(a));
    return host_may_use(fake.sysroot(), d.value(), host_routes(fake.sysroot()));
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

// A root the kernel mounted itself (no initramfs) is "/dev/root" in the mount table, a name that leads
// nowhere; mountinfo's device number still names the partition.
TEST_F(HostUsage, RootMountedAsDevRootBlocks) {
  std::string number = fake.read("/sys/class/block/nvme0n1p2/dev");
  number.pop_back();
  fake.write("/proc/self/mountinfo", "1 0 0:22 / /proc rw - proc proc rw\n22 1 " + number +
                                         " / / rw,relatime shared:1 - ext4 /dev/root rw\n");
  fake.write("/proc/self/mounts", "/dev/root / ext4 rw 0 0\n");
  auto u = uses("0000:00:03.0");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_EQ(u[0], "/dev/root (through nvme0n1p2) is mounted on / (ext4)");
  EXPECT_TRUE(uses("0000:00:04.0").empty());
}

// An active LVM volume group on the disk, none of its volumes mounted: the host still uses it.
TEST_F(HostUsage, HeldByDeviceMapperBlocks) {
  fake.add_dm("dm-0", {"nvme0n1p2"});
  auto u = uses("0000:00:03.0");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_EQ(u[0], "nvme0n1p2 is held by dm-0 (a device-mapper, LVM, md or bcache device built on it)");
}

// NVMe native multipath: the namespace the host mounts lives under the subsystem, not the controller.
TEST_F(HostUsage, NvmeMultipathNamespaceBlocks) {
  fake.write("/sys/devices/pci0000:00/0000:00:03.0/nvme/nvme0/nvme0c0n1/dev", "259:90\n");
  fake.link("/sys/class/block/nvme0c0n1", "/sys/devices/pci0000:00/0000:00:03.0/nvme/nvme0/nvme0c0n1");
  std::string head = "/sys/devices/virtual/nvme-subsystem/nvme-subsys0/nvme1n1";
  fake.write(head + "/dev", "259:91\n");
  fake.link(head + "/multipath/nvme0c0n1", "/sys/devices/pci0000:00/0000:00:03.0/nvme/nvme0/nvme0c0n1");
  fake.link("/sys/class/block/nvme1n1", head);
  fake.write(head + "/nvme1n1p1/dev", "259:92\n");
  fake.link("/sys/class/block/nvme1n1p1", head + "/nvme1n1p1");
  fake.write("/proc/self/mounts", "/dev/nvme1n1p1 /srv xfs rw 0 0\n");
  auto u = uses("0000:00:03.0");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_EQ(u[0], "/dev/nvme1n1p1 is mounted on /srv (xfs)");
}

// The NIC the host's default route leaves through, directly or through a bridge.
TEST_F(HostUsage, NicCarryingTheDefaultRouteBlocks) {
  fake.link("/sys/class/net/eth0/device", "/sys/devices/pci0000:00/0000:00:04.0");
  EXPECT_TRUE(uses("0000:00:04.0").empty());
  std::string header = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
  fake.write("/proc/net/route", header + "eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n");
  EXPECT_TRUE(uses("0000:00:04.0").empty()) << "a route to its own subnet only";
  fake.write("/proc/net/route", header + "eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
  auto u = uses("0000:00:04.0");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_EQ(u[0], "its interface eth0 carries the host's default route");

  fake.write("/proc/net/route", header);
  fake.link("/sys/class/net/eth0/master", "/sys/devices/virtual/net/br0");
  fake.write("/proc/net/ipv6_route",
             "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
             "fe800000000000000000000000000001 00000400 00000001 00000000 00000003 br0\n");
  u = uses("0000:00:04.0");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_EQ(u[0], "its interface eth0 is under br0, which carries the host's default route");

  // A VLAN on the NIC, in a bridge that has the route: two levels up.
  fake.write("/proc/net/ipv6_route", "");
  std::filesystem::remove(fake.root() / "sys/class/net/eth0/master");
  fake.link("/sys/class/net/eth0/upper_eth0.100", "/sys/devices/virtual/net/eth0.100");
  fake.link("/sys/class/net/eth0.100", "/sys/devices/virtual/net/eth0.100");
  fake.link("/sys/devices/virtual/net/eth0.100/master", "/sys/devices/virtual/net/br1");
  fake.write("/proc/net/route", header + "br1\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
  u = uses("0000:00:04.0");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_EQ(u[0], "its interface eth0 is under br1, which carries the host's default route");
}

// A NIC with routes to networks other than the default one: the host may be reached through it (a
// management network, NFS or iSCSI storage). Not a refusal: a warning naming the networks.
TEST_F(HostUsage, NicWithNetworkRoutesIsACaution) {
  fake.link("/sys/class/net/eth1/device", "/sys/devices/pci0000:00/0000:00:04.0");
  std::string header = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
  fake.write("/proc/net/route", header + "eth1\t0000FEA9\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n");
  fake.write("/proc/net/ipv6_route",
             "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 "
             "00000000000000000000000000000000 00000100 00000002 00000000 00000001     eth1\n"
             "fd000000000000000000000000000002 80 00000000000000000000000000000000 00 "
             "00000000000000000000000000000000 00000000 00000003 00000000 80200001     eth1\n"
             "ff000000000000000000000000000000 08 00000000000000000000000000000000 00 "
             "00000000000000000000000000000000 00000100 00000003 00000000 00000001     eth1\n");
  EXPECT_TRUE(cautions("0000:00:04.0").empty()) << "link-local, multicast and its own address only";

  fake.write("/proc/net/route", header + "eth1\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n");
  fake.write("/proc/net/ipv6_route",
             "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 "
             "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth1\n");
  EXPECT_TRUE(uses("0000:00:04.0").empty());
  auto c = cautions("0000:00:04.0");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].rfind("its interface eth1 carries routes to 10.0.0.0/24, fd00::/64: if the host is "
                       "reached through that network",
                       0),
            0u)
      << c[0];

  // In a bridge that has the address: the bridge's routes.
  fake.write("/proc/net/ipv6_route", "");
  fake.write("/proc/net/route", header + "br0\t0010A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n");
  fake.link("/sys/class/net/eth1/master", "/sys/devices/virtual/net/br0");
  c = cautions("0000:00:04.0");
  ASSERT_EQ(c.size(), 1u);
  EXPECT_NE(c[0].find("eth1 (under br0) carries routes to 192.168.16.0/24"), std::string::npos) << c[0];

  // With the default route as well it is needed, and refused: no second word about it.
  fake.write("/proc/net/route", header + "br0\t0010A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n" +
                                    "br0\t00000000\t0110A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
  EXPECT_EQ(uses("0000:00:04.0").size(), 1u);
  EXPECT_TRUE(cautions("0000:00:04.0").empty());
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

// A GPU a process has open (a display server on its DRM node, a CUDA job on NVIDIA's node): its driver's
// unbind would wait for them. Nodes nobody has open, and other devices' nodes, are no reason.
TEST_F(HostUsage, AGpuAProcessHasOpenBlocks) {
  const std::string gpu = "/sys/devices/pci0000:00/0000:00:06.0";
  fake.write(gpu + "/drm/card1/uevent", "MAJOR=226\nMINOR=1\nDEVNAME=dri/card1\n");
  fake.write(gpu + "/drm/renderD129/uevent", "MAJOR=226\nMINOR=129\nDEVNAME=dri/renderD129\n");
  fake.link("/sys/class/drm/card1", gpu + "/drm/card1");
  fake.link("/sys/class/drm/renderD129", gpu + "/drm/renderD129");
  fake.write("/sys/devices/pci0000:00/0000:00:01.0/drm/card0/uevent", "DEVNAME=dri/card0\n");
  fake.link("/sys/class/drm/card0", "/sys/devices/pci0000:00/0000:00:01.0/drm/card0");
  for (const char* dev : {"/dev/dri/card0", "/dev/dri/card1", "/dev/dri/renderD129", "/dev/nvidia2"}) fake.write(dev, "");
  fake.write("/proc/300/comm", "plymouthd\n");
  fake.link("/proc/300/fd/4", "/dev/dri/card0");  // the other GPU's
  EXPECT_TRUE(uses("0000:00:06.0").empty());
  fake.write("/proc/900/comm", "Xorg\n");
  fake.link("/proc/900/fd/12", "/dev/dri/card1");
  auto u = uses("0000:00:06.0");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_NE(u[0].find("process 900 (Xorg) has its GPU open"), std::string::npos) << u[0];
  EXPECT_NE(u[0].find("/dev/dri/card1"), std::string::npos) << u[0];
  EXPECT_EQ(u[0].find("card0"), std::string::npos) << u[0];
  // NVIDIA's driver: its node is named in /proc, not sysfs.
  std::filesystem::remove(fake.root() / "proc/900/fd/12");
  fake.write("/proc/driver/nvidia/gpus/0000:00:06.0/information", "Model: \t\t Tesla T4\nDevice Minor: \t 2\n");
  fake.write("/proc/901/comm", "nvidia-persiste\n");
  fake.link("/proc/901/fd/3", "/dev/nvidia2");
  u = uses("0000:00:06.0");
  ASSERT_EQ(u.size(), 1u);
  EXPECT_NE(u[0].find("process 901 (nvidia-persiste) has its GPU open"), std::string::npos) << u[0];
  EXPECT_NE(u[0].find("/dev/nvidia2"), std::string::npos) << u[0];
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
