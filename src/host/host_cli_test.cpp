// End-to-end through host_main on a fake tree: argument handling, output and exit codes.
#include "host/host_cli.h"

#include <filesystem>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "host/reservation_plan.h"
#include "testing/fake_host.h"

namespace passvm::host {
namespace {

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::populate_host(fake);
    fake.add_driver("vfio-pci");
  }
  int run(std::vector<std::string> args) {
    args.insert(args.begin() + 1, {"--sysroot", fake.root().string()});
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    int status = host_main(static_cast<int>(argv.size()), argv.data());
    out = ::testing::internal::GetCapturedStdout();
    err = ::testing::internal::GetCapturedStderr();
    return status;
  }
  // `reserve --boot-claim ADDRESS` claims the device: udev hears of it, and it is marked for vfio-pci.
  void expect_boot_claimed(const std::string& address) {
    EXPECT_EQ(run({"passvm reserve", "--boot-claim", address}), 0) << err;
    EXPECT_EQ(out, "PASSVM_PPTDEV=1\n");
    EXPECT_EQ(fake.read("/sys/devices/pci0000:00/" + address + "/driver_override"), "vfio-pci");
  }
  testing::FakeSysfs fake;
  std::string out, err;
};

TEST_F(Cli, ListJsonReflectsSysfs) {
  fake.bind("0000:00:03.0", "vfio-pci");
  fake.set_override("0000:00:03.0", "vfio-pci");
  ASSERT_EQ(run({"passvm list", "--json"}), 0) << err;
  auto j = nlohmann::json::parse(out);
  ASSERT_EQ(j.size(), 8u);
  auto nvme = j[2];
  EXPECT_EQ(nvme["address"], "0000:00:03.0");
  EXPECT_EQ(nvme["vendor"], "1b36");
  EXPECT_EQ(nvme["class_name"], "NVMe controller");
  EXPECT_EQ(nvme["driver"], "vfio-pci");
  EXPECT_EQ(nvme["iommu_group"], 2);
  EXPECT_EQ(nvme["reserved"], true);
  EXPECT_EQ(nvme["ready"], true);
  EXPECT_TRUE(j[4]["driver"].is_null());
  EXPECT_EQ(j[3]["reserved"], false);
}

TEST_F(Cli, ListTableHasOneRowPerDevice) {
  ASSERT_EQ(run({"passvm list"}), 0) << err;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 9);
  EXPECT_NE(out.find("0000:00:06.1  10de:10f0 Audio device"), std::string::npos) << out;
}

TEST_F(Cli, CalledWithCommandAsSecondArgument) {
  std::vector<std::string> args{"passvm", "list", "--sysroot", fake.root().string()};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  ::testing::internal::CaptureStdout();
  EXPECT_EQ(host_main(4, argv.data()), 0);
  EXPECT_NE(::testing::internal::GetCapturedStdout().find("0000:00:03.0"), std::string::npos);
}

TEST_F(Cli, MalformedAddressIsOneLineAndExit1) {
  EXPECT_EQ(run({"passvm reserve", "0/99/0"}), 1);
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_EQ(err.rfind("error: malformed PCI address '0/99/0'", 0), 0u) << err;
}

TEST_F(Cli, DryRunPrintsWritesWithoutDoingThem) {
  ASSERT_EQ(run({"passvm reserve", "--dry-run", "0/3/0"}), 0) << err;
  EXPECT_NE(out.find("would: echo 'vfio-pci' > /sys/bus/pci/devices/0000:00:03.0/driver_override"),
            std::string::npos)
      << out;
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:03.0/driver_override"), "(null)\n");
}

TEST_F(Cli, ReserveRefusesMountedDisk) {
  fake.write("/proc/self/mounts", "/dev/nvme0n1p1 /srv xfs rw 0 0\n");
  EXPECT_EQ(run({"passvm reserve", "0000:00:03.0"}), 1);
  EXPECT_NE(err.find("mounted on /srv"), std::string::npos) << err;
}

TEST_F(Cli, ReserveNeedsExactlyOneMode) {
  EXPECT_EQ(run({"passvm reserve"}), 1);
  EXPECT_NE(err.find("exactly one of"), std::string::npos);
  EXPECT_EQ(run({"passvm reserve", "--apply-config", "00:03.0"}), 1);
}

TEST_F(Cli, ReserveExecutesAndReportsWhatTheKernelDidNot) {
  // The fake kernel binds nothing on drivers_probe, so verification must catch it.
  EXPECT_EQ(run({"passvm reserve", "00:04.0"}), 1);
  EXPECT_NE(err.find("not bound to vfio-pci"), std::string::npos) << err;
  EXPECT_EQ(fake.read("/sys/bus/pci/drivers_probe"), "0000:00:04.0");
}

TEST_F(Cli, BootClaimOnlyForListedDevices) {
  fake.bind("0000:00:03.0", "");
  EXPECT_EQ(run({"passvm reserve", "--boot-claim", "0000:00:03.0"}), 0);  // no config: nothing
  EXPECT_EQ(out, "");
  fake.write("/etc/passvm/pptdevs.conf", "pptdevs=\"0/3/0\"\n");
  EXPECT_EQ(run({"passvm reserve", "--boot-claim", "0000:00:04.0"}), 0);
  EXPECT_EQ(out, "");
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:04.0/driver_override"), "(null)\n");
  expect_boot_claimed("0000:00:03.0");
}

// A renumbered bus puts another device at a listed address: with id= on its line, it stays on the host.
TEST_F(Cli, BootClaimRefusesAnotherDeviceThanTheConfiguredId) {
  fake.bind("0000:00:03.0", "");
  fake.write("/etc/passvm/pptdevs.conf", "0000:00:03.0 id=8086:1533\n");
  EXPECT_EQ(run({"passvm reserve", "--boot-claim", "0000:00:03.0"}), 1);
  EXPECT_EQ(out, "");
  EXPECT_NE(err.find("not claiming 0000:00:03.0: 0000:00:03.0 is 1b36:0010 (NVMe controller), not the 8086:1533"),
            std::string::npos)
      << err;
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:03.0/driver_override"), "(null)\n");
  fake.write("/etc/passvm/pptdevs.conf", "0000:00:03.0 id=1b36:0010\n");
  expect_boot_claimed("0000:00:03.0");
}

// One bad line keeps its own devices on the host and no others: the boot claim of a device on a good
// line goes on, quietly about the bad one; --apply-config claims the rest and reports it with status 1.
TEST_F(Cli, ABadConfigLineStopsOnlyItsOwnDevices) {
  fake.bind("0000:00:03.0", "");
  fake.write("/etc/passvm/pptdevs.conf", "0000:00:03.0\n0000:00:05.0 owner=bob\n0000:00:04.0 id=8086:1533\n");
  expect_boot_claimed("0000:00:03.0");
  EXPECT_EQ(err, "");
  EXPECT_EQ(run({"passvm reserve", "--apply-config", "--dry-run"}), 1);
  EXPECT_NE(err.find("pptdevs.conf:2: unknown option 'owner=bob'"), std::string::npos) << err;
  EXPECT_NE(err.find("not the 8086:1533 that /etc/passvm/pptdevs.conf:3 expects there"), std::string::npos) << err;
  EXPECT_EQ(out.find("0000:00:05.0"), std::string::npos) << out;
  EXPECT_EQ(out.find("0000:00:04.0"), std::string::npos) << out;
}

// The second device's unbind fails: the first, already taken from its driver, is given back, so the
// host is as before rather than half reserved.
TEST_F(Cli, AReservationThatFailsPartWayIsUndone) {
  std::filesystem::remove(fake.root() / "sys/bus/pci/drivers/e1000e/unbind");
  EXPECT_EQ(run({"passvm reserve", "00:03.0", "00:04.0"}), 1);
  EXPECT_NE(err.find("0000:00:04.0/driver/unbind for writing"), std::string::npos) << err;
  EXPECT_NE(err.find("0000:00:03.0: given back (driver nvme)"), std::string::npos) << err;
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:03.0/driver_override"), "\n");
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:04.0/driver_override"), "\n");
  EXPECT_FALSE(fake.sysroot().exists("/run/passvm/reserved/0000:00:03.0"));
}

// Marked for vfio-pci by hand but still on its host driver: a reservation that fails takes it from that
// driver all the same, so it is given back too, not left without a driver, and marked as it was.
TEST_F(Cli, AFailedReservationGivesBackADeviceMarkedButOnItsDriver) {
  fake.write("/sys/devices/pci0000:00/0000:00:04.0/driver_override", "vfio-pci");
  EXPECT_EQ(run({"passvm reserve", "00:04.0"}), 1);  // the fake kernel binds nothing to vfio-pci
  EXPECT_NE(err.find("0000:00:04.0: given back (driver e1000e, driver_override vfio-pci as before)"), std::string::npos)
      << err;
  EXPECT_EQ(err.find("still reserved"), std::string::npos) << err;
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:04.0/driver_override"), "vfio-pci");
  EXPECT_FALSE(fake.sysroot().exists("/run/passvm/reserved/0000:00:04.0"));
}

// Another tool's override (pci-stub) on a device still on its driver goes back the same way.
TEST_F(Cli, AFailedReservationPutsBackAnotherToolsOverride) {
  fake.write("/sys/devices/pci0000:00/0000:00:04.0/driver_override", "pci-stub");
  EXPECT_EQ(run({"passvm reserve", "00:04.0"}), 1);
  EXPECT_NE(err.find("0000:00:04.0: given back (driver e1000e, driver_override pci-stub as before)"), std::string::npos)
      << err;
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:04.0/driver_override"), "pci-stub");
}

// On a --sysroot tree, modprobe must not run: it would load modules into the running kernel. A modprobe
// first in PATH leaves a mark if it is run.
TEST_F(Cli, AFakeTreeRunsNoCommands) {
  auto bin = fake.root() / "fake-bin";
  std::filesystem::create_directories(bin);
  const auto mark = fake.root() / "modprobe-ran";
  fake.write("/fake-bin/modprobe", "#!/bin/sh\ntouch '" + mark.string() + "'\n");
  std::filesystem::permissions(bin / "modprobe", std::filesystem::perms::owner_all);
  std::filesystem::remove_all(fake.root() / "sys/bus/pci/drivers/vfio-pci");
  const std::string path = std::getenv("PATH");
  setenv("PATH", (bin.string() + ":" + path).c_str(), 1);
  int status = run({"passvm reserve", "00:04.0"});
  setenv("PATH", path.c_str(), 1);
  EXPECT_EQ(status, 1);
  EXPECT_NE(err.find("did not create /sys/bus/pci/drivers/vfio-pci"), std::string::npos) << err;
  EXPECT_FALSE(std::filesystem::exists(mark)) << "modprobe was run";
}

// vfio-pci did not take the device, so its group node never appears for the --user's chown: the error
// says what the kernel did, not only that the node is missing.
TEST_F(Cli, AReservationForAUserThatVfioRefusedSaysSo) {
  EXPECT_EQ(run({"passvm reserve", "--user", "root", "00:04.0"}), 1);  // the fake kernel binds nothing
  EXPECT_NE(err.find("did not appear"), std::string::npos) << err;
  EXPECT_NE(err.find("not bound to vfio-pci"), std::string::npos) << err;
  EXPECT_LT(err.find("not bound to vfio-pci"), err.find("did not appear")) << err;
}

// The config's devices are reserved as the config says: flags that would change that are refused, not
// ignored.
TEST_F(Cli, ApplyConfigRefusesForceAndWithGroup) {
  fake.write("/etc/passvm/pptdevs.conf", "pptdevs=\"0/3/0\"\n");
  EXPECT_EQ(run({"passvm reserve", "--apply-config", "--force"}), 1);
  EXPECT_NE(err.find("--force goes with device addresses"), std::string::npos) << err;
  EXPECT_EQ(run({"passvm reserve", "--apply-config", "--with-group", "--dry-run"}), 1);
  EXPECT_NE(err.find("--with-group goes with device addresses"), std::string::npos) << err;
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:03.0/driver_override"), "(null)\n");
}

TEST_F(Cli, BootClaimRefusesDryRunRatherThanActing) {
  fake.bind("0000:00:03.0", "");
  fake.write("/etc/passvm/pptdevs.conf", "pptdevs=\"0/3/0\"\n");
  EXPECT_EQ(run({"passvm reserve", "--boot-claim", "0000:00:03.0", "--dry-run"}), 1);
  EXPECT_NE(err.find("passvm reserve --apply-config --dry-run"), std::string::npos) << err;
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:03.0/driver_override"), "(null)\n");
}

TEST_F(Cli, RelativeConfigIsTheCallersPath) {
  std::string here = std::filesystem::current_path().string();
  fake.write(here + "/mine.conf", "pptdevs=\"0/3/0\"\n");
  ASSERT_EQ(run({"passvm reserve", "--apply-config", "--config", "mine.conf", "--dry-run"}), 0) << err;
  EXPECT_NE(out.find("0000:00:03.0"), std::string::npos) << out;
}

TEST_F(Cli, ApplyConfigWithoutConfigExplainsTheFix) {
  EXPECT_EQ(run({"passvm reserve", "--apply-config"}), 1);
  EXPECT_NE(err.find("create it with one device per line"), std::string::npos) << err;
}

TEST_F(Cli, CheckExitsNonZeroOnFailure) {
  EXPECT_EQ(run({"passvm check", "--json"}), 1);  // no /dev/kvm in the fake tree
  auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j[0]["name"], "kvm");
  EXPECT_EQ(j[0]["verdict"], "fail");
  EXPECT_EQ(run({"passvm check", "--memory", "lots"}), 1);
  EXPECT_NE(err.find("bad size 'lots'"), std::string::npos);
}

TEST_F(Cli, ReserveForUnknownUserChangesNothing) {
  EXPECT_EQ(run({"passvm reserve", "--user", "mallory", "00:03.0"}), 1);
  EXPECT_EQ(err.rfind("error: unknown user 'mallory'", 0), 0u) << err;
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:03.0/driver_override"), "(null)\n");
  EXPECT_FALSE(read_reservation(fake.sysroot(), PciAddress::parse("00:03.0")).has_value());
}

TEST_F(Cli, ReserveForUserDryRunPrintsTheChown) {
  ASSERT_EQ(run({"passvm reserve", "--dry-run", "--user", "alice", "0/3/0"}), 0) << err;
  EXPECT_NE(out.find("would: chown alice: /dev/vfio/2 && chmod 0600 /dev/vfio/2\n"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(fake.root() / ".passvm-owner"));
}

TEST_F(Cli, ListShowsTheOwner) {
  fake.bind("0000:00:03.0", "vfio-pci");
  fake.set_override("0000:00:03.0", "vfio-pci");
  fake.write("/run/passvm/reserved/0000:00:03.0", "driver=nvme\nuser=alice\n");
  ASSERT_EQ(run({"passvm list"}), 0) << err;
  EXPECT_NE(out.find("RESERVED OWNER      READY"), std::string::npos) << out;
  EXPECT_NE(out.find("yes      alice      yes"), std::string::npos) << out;
  ASSERT_EQ(run({"passvm list", "--json"}), 0) << err;
  auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j[2]["owner"], "alice");
  EXPECT_TRUE(j[3]["owner"].is_null());
}

TEST_F(Cli, BootClaimGivesTheConfiguredUserTheGroup) {
  fake.bind("0000:00:03.0", "");
  fake.write("/dev/vfio/2", "");
  fake.write("/etc/passvm/pptdevs.conf", "0000:00:03.0 user=alice\n");
  EXPECT_EQ(run({"passvm reserve", "--boot-claim", "0000:00:03.0"}), 0) << err;
  EXPECT_EQ(out, "PASSVM_PPTDEV=1\n");
  EXPECT_EQ(fake.sysroot().owner("/dev/vfio/2"), (FileOwner{1000, 1000, 0600}));
  EXPECT_EQ(read_reservation(fake.sysroot(), PciAddress::parse("00:03.0"))->user, "alice");
}

TEST_F(Cli, ConfiguredUnknownUserIsNotClaimed) {
  fake.bind("0000:00:03.0", "");
  fake.write("/etc/passvm/pptdevs.conf", "0000:00:03.0 user=mallory\n00:05.0\n");
  EXPECT_EQ(run({"passvm reserve", "--boot-claim", "0000:00:03.0"}), 1);
  EXPECT_NE(err.find("not claiming 0000:00:03.0: unknown user 'mallory'"), std::string::npos) << err;
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:03.0/driver_override"), "(null)\n");
  // --apply-config goes on with the other devices and fails at the end.
  EXPECT_EQ(run({"passvm reserve", "--apply-config", "--dry-run"}), 1);
  EXPECT_NE(err.find("unknown user 'mallory'"), std::string::npos) << err;
  EXPECT_NE(out.find("would: echo '0000:00:05.0' > /sys/bus/pci/drivers_probe"), std::string::npos) << out;
}

TEST_F(Cli, CheckForUserNamesWhatTheyLack) {
  fake.write("/dev/kvm", "");
  fake.sysroot().set_owner("/dev/kvm", {0, 108, 0660});
  EXPECT_EQ(run({"passvm check", "--user", "bob", "--json", "00:03.0"}), 1);
  auto j = nlohmann::json::parse(out);
  EXPECT_EQ(j[0]["name"], "/dev/kvm");
  EXPECT_EQ(j[0]["fix"], "`usermod -aG kvm bob` (takes effect at their next login)");
  EXPECT_EQ(j.back()["name"], "device 0000:00:03.0");
  EXPECT_EQ(j.back()["fix"], "`passvm reserve --user bob 0000:00:03.0`");
  EXPECT_EQ(run({"passvm check", "--user", "mallory"}), 1);
  EXPECT_NE(err.find("unknown user 'mallory'"), std::string::npos) << err;
}

TEST_F(Cli, UnknownOptionIsUsageError) { EXPECT_EQ(run({"passvm list", "--frobnicate"}), 2); }

}  // namespace
}  // namespace passvm::host
