#include "host/preflight.h"

#include <gtest/gtest.h>

#include "testing/fake_host.h"
#include "host/host_error.h"

namespace passvm::host {
namespace {

class Preflight : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::populate_host(fake);
    fake.write("/dev/kvm", "");
    fake.write("/dev/vfio/vfio", "");
    fake.write("/sys/class/iommu/dmar0/intel-iommu/ecap", "f0203f\n");  // bit 3 set: IR
    fake.write("/proc/cmdline", "console=ttyS0 intel_iommu=on\n");
    fake.write("/proc/sys/kernel/osrelease", "6.1.0-test\n");
    fake.write("/lib/modules/6.1.0-test/modules.dep",
               "kernel/drivers/vfio/vfio.ko:\nkernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko\n"
               "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/vfio.ko\n");
    for (auto m : {"vfio", "vfio_pci", "vfio_iommu_type1"}) fake.write(std::string("/sys/module/") + m + "/refcnt", "0\n");
    fake.write("/proc/meminfo", "MemTotal: 3000000 kB\nHugePages_Total:     512\nHugePages_Free:      512\n"
                                "Hugepagesize:       2048 kB\n");
    fake.write("/sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never\n");
    fake.bind("0000:00:03.0", "vfio-pci");
    fake.write("/dev/vfio/2", "");
  }
  CheckLine line(const std::string& name) {
    for (auto& l : run_preflight(fake.sysroot(), facts)) {
      if (l.name == name) return l;
    }
    ADD_FAILURE() << "no line " << name;
    return {};
  }
  bool any_fail() {
    for (auto& l : run_preflight(fake.sysroot(), facts)) {
      if (l.verdict == Verdict::Fail) return true;
    }
    return false;
  }
  testing::FakeSysfs fake;
  ProcessFacts facts{512ull << 20, std::nullopt, false};
};

TEST_F(Preflight, HealthyHostPasses) {
  for (auto& l : run_preflight(fake.sysroot(), facts)) {
    EXPECT_EQ(l.verdict, Verdict::Pass) << l.name << ": " << l.detail;
  }
}

TEST_F(Preflight, MissingKvmFailsWithFix) {
  std::filesystem::remove(fake.root() / "dev/kvm");
  auto l = line("kvm");
  EXPECT_EQ(l.verdict, Verdict::Fail);
  EXPECT_NE(l.fix.find("modprobe kvm_"), std::string::npos);
  EXPECT_TRUE(any_fail());
}

TEST_F(Preflight, NoIommuFails) {
  std::filesystem::remove_all(fake.root() / "sys/class/iommu");
  std::filesystem::remove_all(fake.root() / "sys/kernel/iommu_groups");
  EXPECT_EQ(line("iommu").verdict, Verdict::Fail);
  EXPECT_NE(line("iommu").fix.find("intel_iommu=on"), std::string::npos);
  for (const char* check : {"iommu", "iommu groups"})
    EXPECT_EQ(line(check).fix.find("amd_iommu=on"), std::string::npos) << "not a value amd_iommu= takes";
  EXPECT_EQ(line("iommu groups").verdict, Verdict::Fail);
}

TEST_F(Preflight, InterruptRemappingFromEcapBit3) {
  fake.write("/sys/class/iommu/dmar0/intel-iommu/ecap", "f02037\n");  // bit 3 clear
  auto l = line("interrupt remapping");
  EXPECT_EQ(l.verdict, Verdict::Fail);
  EXPECT_NE(l.detail.find("dmar0"), std::string::npos);
  fake.write("/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts", "Y\n");
  EXPECT_EQ(line("interrupt remapping").verdict, Verdict::Warn);
}

TEST_F(Preflight, InterruptRemappingOffOnCommandLine) {
  fake.write("/proc/cmdline", "intel_iommu=on intremap=off\n");
  EXPECT_EQ(line("interrupt remapping").verdict, Verdict::Fail);
}

TEST_F(Preflight, UnloadedButAvailableModuleWarnsMissingOneFails) {
  std::filesystem::remove_all(fake.root() / "sys/module/vfio_pci");
  EXPECT_EQ(line("vfio_pci").verdict, Verdict::Warn);
  fake.write("/lib/modules/6.1.0-test/modules.dep", "kernel/drivers/vfio/vfio.ko:\n");
  EXPECT_EQ(line("vfio_pci").verdict, Verdict::Fail);
  EXPECT_EQ(line("vfio").verdict, Verdict::Pass);
}

TEST_F(Preflight, MemlockAgainstGuestSize) {
  facts.memlock_limit = 64ull << 20;
  auto l = line("memlock");
  EXPECT_EQ(l.verdict, Verdict::Fail);
  EXPECT_NE(l.detail.find("64 MiB"), std::string::npos);
  EXPECT_NE(l.fix.find("ulimit -l"), std::string::npos);
  facts.root = true;
  EXPECT_EQ(line("memlock").verdict, Verdict::Pass);
  facts.root = false;
  facts.memlock_limit = 1ull << 30;
  EXPECT_EQ(line("memlock").verdict, Verdict::Pass);
  facts.guest_memory = 2ull << 30;
  EXPECT_EQ(line("memlock").verdict, Verdict::Fail);
}

TEST_F(Preflight, HugepagesWarnWhenTooFew) {
  facts.guest_memory = 2ull << 30;  // 1024 pages of 2 MiB, 512 free
  auto l = line("hugepages");
  EXPECT_EQ(l.verdict, Verdict::Warn);
  EXPECT_NE(l.fix.find("echo 1024 > /proc/sys/vm/nr_hugepages"), std::string::npos) << l.fix;
  EXPECT_FALSE(any_fail());  // slower, not broken
}

TEST_F(Preflight, TransparentHugePagesOffWarnsWithFix) {
  EXPECT_EQ(line("transparent huge pages").verdict, Verdict::Pass);
  fake.write("/sys/kernel/mm/transparent_hugepage/enabled", "always madvise [never]\n");
  auto l = line("transparent huge pages");
  EXPECT_EQ(l.verdict, Verdict::Warn);
  EXPECT_NE(l.detail.find("4 KiB pages"), std::string::npos) << l.detail;
  EXPECT_NE(l.fix.find("echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"), std::string::npos) << l.fix;
  EXPECT_FALSE(any_fail());
}

TEST_F(Preflight, ReservedDeviceWithBrokenGroupFails) {
  fake.bind("0000:00:06.0", "vfio-pci");
  fake.write("/dev/vfio/5", "");
  auto l = line("device 0000:00:06.0");
  EXPECT_EQ(l.verdict, Verdict::Fail);
  EXPECT_NE(l.detail.find("0000:00:06.1"), std::string::npos);
  EXPECT_NE(l.fix.find("--with-group"), std::string::npos);
  EXPECT_EQ(line("device 0000:00:03.0").verdict, Verdict::Pass);
}

// With the GPU's audio function reserved too, an ISA bridge on its chipset driver still breaks the
// group, and no reservation fixes that.
TEST_F(Preflight, AChipsetBridgeInTheGroupFailsWithoutAReservationFix) {
  fake.add_device("0000:00:1f.0", "8086", "2918", "060100", "lpc_ich", 5);
  fake.bind("0000:00:06.0", "vfio-pci");
  fake.bind("0000:00:06.1", "vfio-pci");
  fake.write("/dev/vfio/5", "");
  auto l = line("device 0000:00:06.0");
  EXPECT_EQ(l.verdict, Verdict::Fail);
  EXPECT_NE(l.detail.find("0000:00:1f.0 is on host driver lpc_ich"), std::string::npos) << l.detail;
  EXPECT_EQ(l.fix.find("--with-group"), std::string::npos) << l.fix;
  EXPECT_NE(l.fix.find("a slot with an IOMMU group of its own"), std::string::npos) << l.fix;
}

class UserPreflight : public Preflight {
 protected:
  void SetUp() override {
    Preflight::SetUp();
    // As on Debian: kvm is root:kvm 0660, the container 0666, a group node root 0600.
    fake.sysroot().set_owner("/dev/kvm", {0, 108, 0660});
    fake.sysroot().set_owner("/dev/vfio/vfio", {0, 0, 0666});
    fake.sysroot().set_owner("/dev/vfio/2", {0, 0, 0600});
    fake.set_override("0000:00:03.0", "vfio-pci");
    fake.write("/run/passvm/reserved/0000:00:03.0", "driver=nvme\nuser=alice\n");
  }
  CheckLine line_for(const std::string& user, const std::string& name) {
    target.user = lookup_user(fake.sysroot(), user);
    return line(name);
  }
  CheckLine line(const std::string& name) {
    for (auto& l : run_preflight(fake.sysroot(), facts, target)) {
      if (l.name == name) return l;
    }
    ADD_FAILURE() << "no line " << name;
    return {};
  }
  CheckTarget target;
};

TEST_F(UserPreflight, KvmByGroupMembership) {
  EXPECT_EQ(line_for("alice", "/dev/kvm").verdict, Verdict::Pass);
  auto l = line_for("bob", "/dev/kvm");
  EXPECT_EQ(l.verdict, Verdict::Fail);
  EXPECT_EQ(l.detail, "/dev/kvm is uid 0, group kvm, mode 0660: bob (uid 1001, not in group kvm) cannot open it "
                      "read-write");
  EXPECT_EQ(l.fix, "`usermod -aG kvm bob` (takes effect at their next login)");
  fake.sysroot().set_owner("/dev/kvm", {0, 108, 0600});
  EXPECT_NE(line_for("alice", "/dev/kvm").fix.find("chmod 0666 /dev/kvm"), std::string::npos);
  EXPECT_EQ(line_for("root", "/dev/kvm").verdict, Verdict::Pass);
}

TEST_F(UserPreflight, ContainerAndGroupNode) {
  EXPECT_EQ(line_for("alice", "/dev/vfio/vfio").verdict, Verdict::Pass);
  auto l = line_for("alice", "device 0000:00:03.0");
  EXPECT_EQ(l.verdict, Verdict::Fail);
  EXPECT_EQ(l.fix, "`passvm reserve --user alice 0000:00:03.0`");
  fake.sysroot().set_owner("/dev/vfio/2", {1000, 1000, 0600});
  EXPECT_EQ(line_for("alice", "device 0000:00:03.0").verdict, Verdict::Pass);
  fake.sysroot().set_owner("/dev/vfio/vfio", {0, 0, 0600});
  EXPECT_NE(line_for("alice", "/dev/vfio/vfio").fix.find("chmod 0666 /dev/vfio/vfio"), std::string::npos);
}

TEST_F(UserPreflight, WhatAVmBuiltAfterTheDropOpensMustBeTheUsers) {
  const HostUser alice = lookup_user(fake.sysroot(), "alice"), bob = lookup_user(fake.sysroot(), "bob");
  const std::vector<PciAddress> nvme = {PciAddress::parse("00:03.0")};
  // The device is reserved for alice, but its group file was left root's: her next boot could not open it.
  auto lines = access_after_drop(fake.sysroot(), alice, nvme);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0].name, "device 0000:00:03.0");
  EXPECT_EQ(lines[0].fix, "`passvm reserve --user alice 0000:00:03.0`");
  fake.sysroot().set_owner("/dev/vfio/2", {1000, 1000, 0600});
  EXPECT_TRUE(access_after_drop(fake.sysroot(), alice, nvme).empty());
  // bob is not in group kvm, and the device is not his.
  lines = access_after_drop(fake.sysroot(), bob, nvme);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0].name, "/dev/kvm");
  EXPECT_EQ(lines[1].name, "device 0000:00:03.0");
  EXPECT_EQ(access_after_drop(fake.sysroot(), bob, {}).size(), 1u) << "without devices, /dev/kvm alone";
}

TEST_F(UserPreflight, DevicesAreTheUsersOrTheOnesNamed) {
  // 00:03.0 is reserved for alice, not bob: bob has none unless he names it.
  auto l = line_for("bob", "devices");
  EXPECT_EQ(l.verdict, Verdict::Warn);
  EXPECT_EQ(l.fix, "`passvm reserve --user bob DDDD:BB:SS.F`");
  target.devices = {PciAddress::parse("00:04.0")};
  l = line_for("bob", "device 0000:00:04.0");
  EXPECT_EQ(l.verdict, Verdict::Fail);
  EXPECT_EQ(l.detail, "not reserved (driver: e1000e)");
  EXPECT_EQ(l.fix, "`passvm reserve --user bob 0000:00:04.0`");
}

TEST_F(UserPreflight, MemlockKernelDefaultWhenNoLineApplies) {
  fake.write("/etc/security/limits.conf", "# nothing\nbob - memlock unlimited\n@audio soft memlock 999\n");
  auto l = line_for("alice", "memlock");
  EXPECT_EQ(l.verdict, Verdict::Fail);
  EXPECT_NE(l.detail.find("alice's RLIMIT_MEMLOCK 8 MiB (from the kernel's default"), std::string::npos) << l.detail;
  EXPECT_EQ(l.fix, "the line `alice - memlock 540672` in /etc/security/limits.d/passvm.conf (next login), or start "
                   "passvm as root with --user alice, which raises the limit before dropping privileges");
  EXPECT_EQ(line_for("bob", "memlock").verdict, Verdict::Pass);
}

TEST_F(UserPreflight, MemlockPrecedenceUserOverGroupOverStar) {
  fake.write("/etc/security/limits.conf", "*  soft memlock 1048576\n*  hard memlock 1048576\n");
  MemlockSetting m = user_memlock(fake.sysroot(), lookup_user(fake.sysroot(), "alice"));
  EXPECT_EQ(m.bytes, 1ull << 30);
  EXPECT_EQ(m.source, "/etc/security/limits.conf:1");
  fake.write("/etc/security/limits.d/50-kvm.conf", "@kvm soft memlock 65536 # too little\n");
  m = user_memlock(fake.sysroot(), lookup_user(fake.sysroot(), "alice"));
  EXPECT_EQ(m.bytes, 64ull << 20);
  EXPECT_EQ(m.source, "/etc/security/limits.d/50-kvm.conf:1");
  auto l = line_for("alice", "memlock");
  EXPECT_EQ(l.verdict, Verdict::Fail);
  EXPECT_EQ(l.fix.rfind("`ulimit -l 540672` before starting passvm (the hard limit allows it)", 0), 0u) << l.fix;
  fake.write("/etc/security/limits.d/60-alice.conf", "alice soft memlock unlimited\n");
  m = user_memlock(fake.sysroot(), lookup_user(fake.sysroot(), "alice"));
  EXPECT_FALSE(m.bytes.has_value());
  EXPECT_EQ(line_for("alice", "memlock").verdict, Verdict::Pass);
  EXPECT_EQ(user_memlock(fake.sysroot(), lookup_user(fake.sysroot(), "bob")).bytes, 1ull << 30);
  fake.write("/etc/security/limits.d/55-range.conf", "1000:1999 soft memlock 2097152\n:999 soft memlock 1\n");
  EXPECT_EQ(user_memlock(fake.sysroot(), lookup_user(fake.sysroot(), "bob")).bytes, 2ull << 30);
}

TEST(ParseSize, SuffixesAndErrors) {
  EXPECT_EQ(parse_size("512M"), 512ull << 20);
  EXPECT_EQ(parse_size("2g"), 2ull << 30);
  EXPECT_EQ(parse_size("4096"), 4096u);
  EXPECT_EQ(parse_size("64K"), 64ull << 10);
  for (const char* bad : {"", "M", "0", "12X", "-1M", "1.5G", "99999999999999999999G"}) {
    EXPECT_THROW(parse_size(bad), HostError) << bad;
  }
}

}  // namespace
}  // namespace passvm::host
