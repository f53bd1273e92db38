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
