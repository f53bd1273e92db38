#include "host/reservation_plan.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>

#include "testing/fake_host.h"
#include "host/host_error.h"
#include "host/host_users.h"

namespace passvm::host {
namespace {

const std::string kNvmeDir = "/sys/bus/pci/devices/0000:00:03.0";

class Planning : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::populate_host(fake);
    fake.add_driver("vfio-pci");
  }
  Plan reserve(std::vector<std::string> words, ReserveOptions options = {}) {
    std::vector<PciAddress> addresses;
    for (const auto& w : words) addresses.push_back(PciAddress::parse(w));
    return plan_reserve(fake.sysroot(), scan_devices(fake.sysroot()), addresses, options);
  }
  Plan release(std::vector<std::string> words) {
    std::vector<PciAddress> addresses;
    for (const auto& w : words) addresses.push_back(PciAddress::parse(w));
    return plan_release(fake.sysroot(), scan_devices(fake.sysroot()), addresses);
  }
  static std::vector<std::string> described(const Plan& plan) {
    std::vector<std::string> out;
    for (const auto& s : plan.steps) out.push_back(s.describe());
    return out;
  }
  // The release of 00:03.0 from vfio-pci: `override` written back, then bound to `driver`.
  static std::vector<std::string> release_of_nvme_dir(const std::string& override, const std::string& driver) {
    return {"echo '" + override + "' > " + kNvmeDir + "/driver_override",
            "echo '0000:00:03.0' > " + kNvmeDir + "/driver/unbind",
            "echo '0000:00:03.0' > /sys/bus/pci/drivers/" + driver + "/bind",
            "rm -f /run/passvm/reserved/0000:00:03.0"};
  }
  // The device on vfio-pci, as a reserve leaves it.
  void on_vfio(const std::string& address) {
    fake.bind(address, "vfio-pci");
    fake.set_override(address, "vfio-pci");
  }
  // Process `pid` (a passvm) holding /dev/vfio/GROUP open as its fd `fd`.
  void vm_holds(int pid, int group, int fd) {
    fake.write(fmt::format("/dev/vfio/{}", group), "");
    fake.write(fmt::format("/proc/{}/comm", pid), "passvm\n");
    fake.link(fmt::format("/proc/{}/fd/{}", pid, fd), fmt::format("/dev/vfio/{}", group));
  }
  // Plays the kernel's part after drivers_probe: whoever driver_override names gets the device.
  void kernel_probe(const std::string& address) {
    auto ov = fake.read("/sys/devices/pci0000:00/" + address + "/driver_override");
    if (ov == "vfio-pci") fake.bind(address, "vfio-pci");
  }
  testing::FakeSysfs fake;
  std::vector<std::string> warnings;
  CommandRunner no_commands = [](const std::vector<std::string>&) { return 0; };
};

TEST_F(Planning, ReserveBoundDeviceOverridesUnbindsAndProbes) {
  auto plan = reserve({"0/3/0"});
  EXPECT_TRUE(plan.errors.empty());
  EXPECT_EQ(described(plan), (std::vector<std::string>{
                                 "remember previous driver 'nvme' in /run/passvm/reserved/0000:00:03.0",
                                 "echo 'vfio-pci' > " + kNvmeDir + "/driver_override",
                                 "echo '0000:00:03.0' > " + kNvmeDir + "/driver/unbind",
                                 "echo '0000:00:03.0' > /sys/bus/pci/drivers_probe",
                             }));
  ASSERT_EQ(plan.targets.size(), 1u);
}

TEST_F(Planning, ReserveDriverlessDeviceSkipsUnbind) {
  auto steps = described(reserve({"00:05.0"}));
  ASSERT_EQ(steps.size(), 3u);
  EXPECT_EQ(steps[2], "echo '0000:00:05.0' > /sys/bus/pci/drivers_probe");
}

// A device given to alice before, taken off vfio-pci by hand and reserved again without --user: the
// group's node is made anew (root's) and goes back to her; one whose owner is gone stays root's, said.
TEST_F(Planning, ReservingAgainWithoutUserGivesTheNewNodeToItsOwner) {
  fake.bind("0000:00:03.0", "");
  fake.write("/run/passvm/reserved/0000:00:03.0", "driver=nvme\nuser=alice\n");
  auto steps = described(reserve({"00:03.0"}));
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(steps.back(), "chown alice: /dev/vfio/2 && chmod 0600 /dev/vfio/2");

  fake.write("/run/passvm/reserved/0000:00:03.0", "driver=nvme\nuser=ghost\n");
  Plan plan = reserve({"00:03.0"});
  steps = described(plan);
  EXPECT_TRUE(std::none_of(steps.begin(), steps.end(), [](const std::string& s) { return s.starts_with("chown"); }));
  ASSERT_EQ(plan.warnings.size(), 1u);
  EXPECT_NE(plan.warnings[0].find("was given to ghost, who is no longer a user here"), std::string::npos)
      << plan.warnings[0];
  bool saved_without_ghost = std::any_of(plan.steps.begin(), plan.steps.end(), [](const Step& st) {
    return st.kind == Step::Kind::SaveState && st.user.empty();
  });
  EXPECT_TRUE(saved_without_ghost) << "the record still names ghost";
}

TEST_F(Planning, LoadsVfioPciOnceWhenMissing) {
  std::filesystem::remove_all(fake.root() / "sys/bus/pci/drivers/vfio-pci");
  auto plan = reserve({"00:04.0", "00:05.0"});
  int loads = 0;
  for (const auto& s : plan.steps) loads += s.kind == Step::Kind::LoadModule;
  EXPECT_EQ(loads, 1);
  EXPECT_EQ(plan.steps.front().describe(), "modprobe vfio-pci");
}

TEST_F(Planning, AlreadyBoundIsANoteAndNoWrites) {
  fake.bind("0000:00:04.0", "vfio-pci");
  fake.set_override("0000:00:04.0", "vfio-pci");
  auto plan = reserve({"00:04.0"});
  EXPECT_TRUE(plan.steps.empty());
  ASSERT_EQ(plan.notes.size(), 1u);
  EXPECT_NE(plan.notes[0].find("already bound"), std::string::npos);
}

TEST_F(Planning, UnknownDeviceIsAnError) {
  auto plan = reserve({"00:09.0"});
  ASSERT_EQ(plan.errors.size(), 1u);
  EXPECT_NE(plan.errors[0].find("unknown device 0000:00:09.0"), std::string::npos);
  EXPECT_NE(plan.errors[0].find("passvm list"), std::string::npos);
}

TEST_F(Planning, BridgeIsRefused) { EXPECT_EQ(reserve({"00:1c.0"}).errors.size(), 1u); }

TEST_F(Planning, RefusesDeviceBackingAMountUnlessForced) {
  fake.write("/proc/self/mounts", "/dev/nvme0n1p2 / ext4 rw 0 0\n");
  auto plan = reserve({"00:03.0"});
  ASSERT_EQ(plan.errors.size(), 1u);
  EXPECT_NE(plan.errors[0].find("mounted on /"), std::string::npos) << plan.errors[0];
  EXPECT_NE(plan.errors[0].find("--force"), std::string::npos);
  EXPECT_THROW(execute(fake.sysroot(), plan, no_commands, warnings), HostError);
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:03.0/driver_override"), "(null)\n");  // nothing written

  auto forced = reserve({"00:03.0"}, {.force = true});
  EXPECT_TRUE(forced.errors.empty());
  EXPECT_EQ(forced.warnings.size(), 1u);
  EXPECT_EQ(forced.steps.size(), 4u);
}

// A NIC whose interface has routes (not the default one): taken, with a warning naming the networks.
TEST_F(Planning, NicWithNetworkRoutesIsTakenWithAWarning) {
  fake.link("/sys/class/net/eth1/device", "/sys/devices/pci0000:00/0000:00:04.0");
  fake.write("/proc/net/route", "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                                "eth1\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n");
  Plan plan = reserve({"00:04.0"});
  EXPECT_TRUE(plan.errors.empty());
  ASSERT_EQ(plan.warnings.size(), 1u);
  EXPECT_EQ(plan.warnings[0].rfind("0000:00:04.0 may be needed by the host: its interface eth1 carries routes to "
                                   "10.0.0.0/24",
                                   0),
            0u)
      << plan.warnings[0];
  EXPECT_FALSE(plan.steps.empty());
}

TEST_F(Planning, OneBadDeviceFailsTheWholeRequest) {
  auto plan = reserve({"00:04.0", "00:09.0"});
  EXPECT_FALSE(plan.errors.empty());
  EXPECT_THROW(execute(fake.sysroot(), plan, no_commands, warnings), HostError);
  EXPECT_EQ(fake.read("/sys/bus/pci/drivers_probe"), "");
}

TEST_F(Planning, NoIommuGroupIsAnError) {
  fake.add_device("0000:00:07.0", "8086", "10d3", "020000", "e1000e", -1);
  auto plan = reserve({"00:07.0"});
  ASSERT_EQ(plan.errors.size(), 1u);
  EXPECT_NE(plan.errors[0].find("no IOMMU group"), std::string::npos);
}

TEST_F(Planning, GroupSiblingOnHostDriverIsWarnedAndCanBeIncluded) {
  auto plan = reserve({"00:06.0"});
  ASSERT_EQ(plan.warnings.size(), 1u);
  EXPECT_NE(plan.warnings[0].find("0000:00:06.1"), std::string::npos);
  EXPECT_NE(plan.warnings[0].find("snd_hda_intel"), std::string::npos);
  EXPECT_NE(plan.warnings[0].find("--with-group 0000:00:06.0"), std::string::npos);
  EXPECT_EQ(plan.targets.size(), 1u);

  auto group = reserve({"00:06.0"}, {.with_group = true});
  EXPECT_TRUE(group.warnings.empty());
  ASSERT_EQ(group.targets.size(), 2u);  // the bridge stays on pcieport
  EXPECT_EQ(group.targets[1].str(), "0000:00:06.1");
}

// An ISA bridge on its chipset driver in the device's group keeps the group from VFIO (only a PCI
// bridge's port driver may stay), and reserving the group cannot help: said, and not reserved.
TEST_F(Planning, AChipsetBridgeOnItsDriverInTheGroupIsABlockerNoReservationFixes) {
  fake.add_device("0000:00:1f.0", "8086", "2918", "060100", "lpc_ich", 5);
  const auto devices = scan_devices(fake.sysroot());
  auto gpu = find_device(devices, PciAddress::parse("00:06.0"));
  ASSERT_TRUE(gpu);
  auto status = group_status(devices, *gpu);
  ASSERT_EQ(status.blockers.size(), 2u);  // the audio function and the ISA bridge; not the PCI bridge
  EXPECT_EQ(status.blockers[1].address.str(), "0000:00:1f.0");
  EXPECT_FALSE(ready_for_passthrough(devices, *gpu));
  auto alone = reserve({"00:06.0"});
  EXPECT_TRUE(alone.errors.empty());
  ASSERT_EQ(alone.warnings.size(), 2u);  // the audio function (--with-group helps), the ISA bridge (nothing does)
  EXPECT_NE(alone.warnings[1].find("0000:00:1f.0 (ISA bridge, driver lpc_ich), which the host keeps"),
            std::string::npos) << alone.warnings[1];
  auto group = reserve({"00:06.0"}, {.with_group = true});
  ASSERT_EQ(group.errors.size(), 1u) << "the whole group was asked for and cannot be had";
  EXPECT_NE(group.errors[0].find("0000:00:1f.0 (ISA bridge, driver lpc_ich), which the host keeps"),
            std::string::npos) << group.errors[0];
}

TEST_F(Planning, ExecuteWritesSysfsAndState) {
  auto plan = reserve({"00:03.0"});
  execute(fake.sysroot(), plan, no_commands, warnings);
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:03.0/driver_override"), "vfio-pci");
  EXPECT_EQ(fake.read("/sys/bus/pci/drivers/nvme/unbind"), "0000:00:03.0");
  EXPECT_EQ(fake.read("/sys/bus/pci/drivers_probe"), "0000:00:03.0");
  EXPECT_EQ(remembered_driver(fake.sysroot(), PciAddress::parse("00:03.0")), "nvme");
}

TEST_F(Planning, ExecuteFailsClearlyWhenModprobeCannotProvideVfio) {
  std::filesystem::remove_all(fake.root() / "sys/bus/pci/drivers/vfio-pci");
  auto plan = reserve({"00:04.0"});
  std::vector<std::vector<std::string>> commands;
  CommandRunner failing = [&](const std::vector<std::string>& argv) {
    commands.push_back(argv);
    return 1;
  };
  try {
    execute(fake.sysroot(), plan, failing, warnings);
    FAIL() << "no error";
  } catch (const HostError& e) {
    EXPECT_NE(std::string(e.what()).find("vfio-pci is missing"), std::string::npos) << e.what();
  }
  ASSERT_EQ(commands.size(), 1u);
  EXPECT_EQ(commands[0], (std::vector<std::string>{"modprobe", "vfio-pci"}));
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:04.0/driver_override"), "(null)\n");
}

TEST_F(Planning, VerifyReservedChecksBindingAndVfioNode) {
  auto target = std::vector<PciAddress>{PciAddress::parse("00:03.0")};
  execute(fake.sysroot(), reserve({"00:03.0"}), no_commands, warnings);
  auto problems = verify_reserved(fake.sysroot(), target);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("not bound to vfio-pci"), std::string::npos);
  kernel_probe("0000:00:03.0");
  problems = verify_reserved(fake.sysroot(), target);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("/dev/vfio/2 is missing"), std::string::npos);
  fake.write("/dev/vfio/2", "");
  EXPECT_TRUE(verify_reserved(fake.sysroot(), target).empty());
}

TEST_F(Planning, ReleaseRebindsRememberedDriver) {
  execute(fake.sysroot(), reserve({"00:03.0"}), no_commands, warnings);
  kernel_probe("0000:00:03.0");
  auto plan = release({"0000:00:03.0"});
  EXPECT_TRUE(plan.errors.empty());
  EXPECT_EQ(described(plan), release_of_nvme_dir("", "nvme"));
  execute(fake.sysroot(), plan, no_commands, warnings);
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:03.0/driver_override"), "\n");
  EXPECT_EQ(fake.read("/sys/bus/pci/drivers/vfio-pci/unbind"), "0000:00:03.0");
  EXPECT_FALSE(remembered_driver(fake.sysroot(), PciAddress::parse("00:03.0")).has_value());
}

TEST_F(Planning, ReleaseRestoresAnOverrideAnotherToolSet) {
  // Parked on pci-stub the usual way: pci-stub binds only a device whose override names it.
  fake.add_driver("pci-stub");
  fake.bind("0000:00:03.0", "pci-stub");
  fake.set_override("0000:00:03.0", "pci-stub");
  auto reserving = reserve({"00:03.0"});
  EXPECT_EQ(described(reserving)[0], "remember previous driver 'pci-stub', driver_override 'pci-stub' in "
                                     "/run/passvm/reserved/0000:00:03.0");
  execute(fake.sysroot(), reserving, no_commands, warnings);
  kernel_probe("0000:00:03.0");
  EXPECT_EQ(read_reservation(fake.sysroot(), PciAddress::parse("00:03.0"))->override_driver, "pci-stub");

  auto plan = release({"00:03.0"});
  EXPECT_EQ(described(plan), release_of_nvme_dir("pci-stub", "pci-stub"));
  execute(fake.sysroot(), plan, no_commands, warnings);
  EXPECT_EQ(fake.read("/sys/devices/pci0000:00/0000:00:03.0/driver_override"), "pci-stub");
}

TEST_F(Planning, AReserveStoppedBeforeTheUnbindGetsItsOverrideBack) {
  // pci-stub named for the next probe, the device on nvme; reserve wrote vfio-pci's override and stopped.
  fake.set_override("0000:00:03.0", "pci-stub");
  auto plan = reserve({"00:03.0"});
  plan.steps.resize(2);  // remember, override; the unbind never happened
  execute(fake.sysroot(), plan, no_commands, warnings);
  EXPECT_EQ(described(release({"00:03.0"})), (std::vector<std::string>{
                                                 "echo 'pci-stub' > " + kNvmeDir + "/driver_override",
                                                 "rm -f /run/passvm/reserved/0000:00:03.0",
                                             }));
}

TEST_F(Planning, ReleasingAgainRetriesABindThatFailed) {
  execute(fake.sysroot(), reserve({"00:03.0"}), no_commands, warnings);
  kernel_probe("0000:00:03.0");
  // The first release cleared the override and unbound, then nvme's bind failed: the device is
  // driverless and no longer reserved, and only the record knows it belongs to nvme.
  auto first = release({"00:03.0"});
  Plan partial;
  partial.steps.assign(first.steps.begin(), first.steps.begin() + 2);
  execute(fake.sysroot(), partial, no_commands, warnings);
  fake.bind("0000:00:03.0", "");
  ASSERT_FALSE(scan_devices(fake.sysroot())[0].reserved());

  auto again = release({"00:03.0"});
  EXPECT_EQ(described(again), (std::vector<std::string>{
                                  "echo '' > " + kNvmeDir + "/driver_override",
                                  "echo '0000:00:03.0' > /sys/bus/pci/drivers/nvme/bind",
                                  "rm -f /run/passvm/reserved/0000:00:03.0",
                              }));
  ASSERT_EQ(again.targets.size(), 1u);
  ASSERT_EQ(again.notes.size(), 1u);
  EXPECT_NE(again.notes[0].find("trying once more to bind it back to nvme"), std::string::npos) << again.notes[0];
  // Once more only: if nvme refuses it again, that is a warning and the record goes, so that releasing
  // never fails on it forever (nor stops the devices after it).
  EXPECT_FALSE(again.steps[1].required);
}

TEST_F(Planning, AnOverrideNamingAnotherDriverGoesBackAfterTheBind) {
  // On nvme, with pci-stub already named for its next probe (a tool parking it, half way).
  fake.set_override("0000:00:03.0", "pci-stub");
  execute(fake.sysroot(), reserve({"00:03.0"}), no_commands, warnings);
  kernel_probe("0000:00:03.0");
  // pci-stub's override first would make nvme's bind fail: clear it, bind nvme, then put it back.
  EXPECT_EQ(described(release({"00:03.0"})), (std::vector<std::string>{
                                                 "echo '' > " + kNvmeDir + "/driver_override",
                                                 "echo '0000:00:03.0' > " + kNvmeDir + "/driver/unbind",
                                                 "echo '0000:00:03.0' > /sys/bus/pci/drivers/nvme/bind",
                                                 "echo 'pci-stub' > " + kNvmeDir + "/driver_override",
                                                 "rm -f /run/passvm/reserved/0000:00:03.0",
                                             }));
}

TEST_F(Planning, ReleaseWithoutMemoryLoadsModaliasAndProbes) {
  // Claimed at boot: nvme was never loaded, so there is no nvme driver to bind to.
  fake.bind("0000:00:03.0", "vfio-pci");
  fake.set_override("0000:00:03.0", "vfio-pci");
  std::filesystem::remove_all(fake.root() / "sys/bus/pci/drivers/nvme");
  auto plan = release({"00:03.0"});
  auto steps = described(plan);
  ASSERT_EQ(steps.size(), 4u);
  EXPECT_EQ(steps[2].rfind("modprobe pci:v00001b36d00000010", 0), 0u) << steps[2];
  EXPECT_FALSE(plan.steps[2].required);
  EXPECT_EQ(steps[3], "echo '0000:00:03.0' > /sys/bus/pci/drivers_probe");
  // A failing modalias load only warns: drivers_probe may still find a driver.
  CommandRunner failing = [](const std::vector<std::string>&) { return 1; };
  execute(fake.sysroot(), plan, failing, warnings);
  EXPECT_EQ(warnings.size(), 1u);
}

// A VM holds the device's group: the kernel's unbind would wait, unkillably, until the VM exits.
TEST_F(Planning, ReleaseOfADeviceAVmHoldsIsRefused) {
  on_vfio("0000:00:03.0");
  vm_holds(4242, 2, 9);
  fake.link("/proc/4242/fd/0", "/dev/null");
  fake.write("/dev/vfio/3", "");
  fake.link("/proc/77/fd/5", "/dev/vfio/3");  // another group's
  auto plan = release({"00:03.0"});
  ASSERT_EQ(plan.errors.size(), 1u);
  EXPECT_EQ(plan.errors[0],
            "0000:00:03.0 is in use by process 4242 (passvm), which has its VFIO group open (a VM): shut that VM down "
            "or remove the device from it first; releasing it now would hang until that process exits");
  EXPECT_TRUE(plan.steps.empty());
  std::filesystem::remove(fake.root() / "proc/4242/fd/9");
  EXPECT_TRUE(release({"00:03.0"}).errors.empty());
}

// Unbinding a physical function's driver takes its virtual functions with it.
TEST_F(Planning, PhysicalFunctionWithVirtualFunctionsIsRefused) {
  fake.write("/sys/devices/pci0000:00/0000:00:04.0/sriov_numvfs", "0\n");
  EXPECT_TRUE(reserve({"00:04.0"}).errors.empty());
  fake.write("/sys/devices/pci0000:00/0000:00:04.0/sriov_numvfs", "4\n");
  auto plan = reserve({"00:04.0"});
  ASSERT_EQ(plan.errors.size(), 1u);
  EXPECT_EQ(plan.errors[0].rfind("0000:00:04.0 has 4 SR-IOV virtual functions enabled", 0), 0u) << plan.errors[0];
  EXPECT_NE(plan.errors[0].find("echo 0 > /sys/bus/pci/devices/0000:00:04.0/sriov_numvfs"), std::string::npos);
  EXPECT_TRUE(reserve({"00:04.0"}, {.force = true}).errors.size() == 1u) << "--force does not make vfio-pci take it";
}

// A virtual function in its physical function's group (no ACS between them): reserving the group would
// take the PF, which reserve refuses, so the warning says the VF cannot be passed through here rather
// than suggesting --with-group; asked with --with-group, nothing is reserved. Another PF with VFs in the
// group is an ordinary member (its VFs can be disabled).
TEST_F(Planning, AVirtualFunctionInItsPhysicalFunctionsGroupIsSaidToBeUnusable) {
  fake.write("/sys/devices/pci0000:00/0000:00:04.0/sriov_numvfs", "1\n");
  fake.add_device("0000:00:04.1", "8086", "10ed", "020000", "igbvf", 3);
  auto plan = reserve({"00:04.1"});
  EXPECT_TRUE(plan.errors.empty()) << plan.errors.front();
  ASSERT_EQ(plan.warnings.size(), 1u);
  EXPECT_NE(plan.warnings[0].find("--with-group"), std::string::npos) << "not its PF yet: " << plan.warnings[0];
  fake.link("/sys/devices/pci0000:00/0000:00:04.1/physfn", "/sys/devices/pci0000:00/0000:00:04.0");
  plan = reserve({"00:04.1"});
  EXPECT_TRUE(plan.errors.empty()) << plan.errors.front();
  ASSERT_EQ(plan.warnings.size(), 1u);
  EXPECT_NE(plan.warnings[0].find("virtual functions from their physical function"), std::string::npos)
      << plan.warnings[0];
  EXPECT_EQ(plan.warnings[0].find("--with-group"), std::string::npos) << plan.warnings[0];
  EXPECT_EQ(plan.targets.size(), 1u);
  plan = reserve({"00:04.1"}, {.with_group = true});
  ASSERT_EQ(plan.errors.size(), 1u);
  EXPECT_NE(plan.errors[0].find("virtual functions from their physical function"), std::string::npos) << plan.errors[0];
}

// A physical function on vfio-pci whose virtual function a VM holds: releasing the PF would take the VF
// away under the VM (vfio-pci disables SR-IOV), and the unbind would wait for that VM.
TEST_F(Planning, ReleaseOfAPhysicalFunctionWhoseVirtualFunctionAVmHoldsIsRefused) {
  on_vfio("0000:00:04.0");
  fake.write("/sys/devices/pci0000:00/0000:00:04.0/sriov_numvfs", "1\n");
  fake.add_device("0000:00:04.1", "8086", "10ed", "020000", "vfio-pci", 7);
  fake.set_override("0000:00:04.1", "vfio-pci");
  fake.link("/sys/devices/pci0000:00/0000:00:04.0/virtfn0", "/sys/devices/pci0000:00/0000:00:04.1");
  fake.link("/sys/devices/pci0000:00/0000:00:04.1/physfn", "/sys/devices/pci0000:00/0000:00:04.0");
  vm_holds(555, 7, 12);
  auto plan = release({"00:04.0"});
  ASSERT_EQ(plan.errors.size(), 1u);
  EXPECT_NE(plan.errors[0].find("0000:00:04.0 has virtual functions in use by process 555 (passvm) (0000:00:04.1)"),
            std::string::npos)
      << plan.errors[0];
  EXPECT_TRUE(plan.steps.empty());
  fake.link("/proc/555/fd/12", "/dev/null");  // the VM let go
  plan = release({"00:04.0"});
  EXPECT_TRUE(plan.errors.empty()) << plan.errors.front();
}

TEST_F(Planning, ReleaseOfUnreservedDeviceDoesNothing) {
  auto plan = release({"00:04.0"});
  EXPECT_TRUE(plan.steps.empty());
  EXPECT_TRUE(plan.targets.empty());
  ASSERT_EQ(plan.notes.size(), 1u);
  EXPECT_NE(plan.notes[0].find("not reserved (driver: e1000e)"), std::string::npos);
}

TEST_F(Planning, ReleaseOfMarkedButUnboundDeviceOnlyClearsOverride) {
  fake.set_override("0000:00:04.0", "vfio-pci");  // marked, still on e1000e
  auto steps = described(release({"00:04.0"}));
  ASSERT_EQ(steps.size(), 1u);
  EXPECT_EQ(steps[0], "echo '' > /sys/bus/pci/devices/0000:00:04.0/driver_override");
}

TEST_F(Planning, BootClaimedDeviceKeepsNoPreviousDriver) {
  // The udev claim marked it before nvme loaded: it never had a driver, and remembers that.
  fake.bind("0000:00:03.0", "");
  fake.set_override("0000:00:03.0", "vfio-pci");
  auto plan = reserve({"00:03.0"});
  execute(fake.sysroot(), plan, no_commands, warnings);
  EXPECT_EQ(remembered_driver(fake.sysroot(), PciAddress::parse("00:03.0")), "");
}

class ForUser : public Planning {
 protected:
  ReserveOptions for_alice(bool with_group = false) {
    return {.with_group = with_group, .user = lookup_user(fake.sysroot(), "alice")};
  }
  // Reserves for alice and plays the kernel: binds to vfio-pci and creates the group node.
  void reserve_for_alice(std::vector<std::string> words, const std::string& node, bool with_group = false) {
    fake.write(node, "");
    auto plan = reserve(words, for_alice(with_group));
    ASSERT_TRUE(plan.errors.empty()) << plan.errors.front();
    execute(fake.sysroot(), plan, no_commands, warnings);
    for (const auto& a : plan.targets) {
      fake.bind(a.str(), "vfio-pci");
      fake.set_override(a.str(), "vfio-pci");
    }
  }
  std::optional<FileOwner> owner(const std::string& node) { return fake.sysroot().owner(node); }
};

TEST_F(ForUser, ReservingAgainForAnotherUserKeepsTheFirstOverride) {
  fake.add_driver("pci-stub");
  fake.bind("0000:00:03.0", "pci-stub");
  fake.set_override("0000:00:03.0", "pci-stub");
  execute(fake.sysroot(), reserve({"00:03.0"}), no_commands, warnings);
  kernel_probe("0000:00:03.0");
  // Now the override is vfio-pci's; the record must not take that for the one to restore.
  reserve_for_alice({"00:03.0"}, "/dev/vfio/2");
  auto record = read_reservation(fake.sysroot(), PciAddress::parse("00:03.0"));
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->user, "alice");
  EXPECT_EQ(record->driver, "pci-stub");
  EXPECT_EQ(record->override_driver, "pci-stub");
}

TEST_F(ForUser, ReserveRecordsTheUserAndGivesThemTheGroupNodeLast) {
  auto plan = reserve({"00:03.0"}, for_alice());
  EXPECT_EQ(described(plan), (std::vector<std::string>{
                                 "remember previous driver 'nvme' and owner alice in /run/passvm/reserved/0000:00:03.0",
                                 "echo 'vfio-pci' > " + kNvmeDir + "/driver_override",
                                 "echo '0000:00:03.0' > " + kNvmeDir + "/driver/unbind",
                                 "echo '0000:00:03.0' > /sys/bus/pci/drivers_probe",
                                 "chown alice: /dev/vfio/2 && chmod 0600 /dev/vfio/2",
                             }));
  fake.write("/dev/vfio/2", "");
  execute(fake.sysroot(), plan, no_commands, warnings);
  EXPECT_EQ(owner("/dev/vfio/2"), (FileOwner{1000, 1000, 0600}));
  auto record = read_reservation(fake.sysroot(), PciAddress::parse("00:03.0"));
  ASSERT_TRUE(record.has_value());
  EXPECT_EQ(record->driver, "nvme");
  EXPECT_EQ(record->user, "alice");
}

TEST_F(ForUser, MissingGroupNodeFailsTheChownClearly) {
  try {
    execute(fake.sysroot(), reserve({"00:03.0"}, for_alice()), no_commands, warnings);
    FAIL() << "no error";
  } catch (const HostError& e) {
    EXPECT_NE(std::string(e.what()).find("/dev/vfio/2 did not appear after binding"), std::string::npos) << e.what();
  }
}

TEST_F(ForUser, OneChownPerGroupWithTheWholeGroup) {
  auto plan = reserve({"00:06.0"}, for_alice(true));
  ASSERT_EQ(plan.targets.size(), 2u);
  auto steps = described(plan);
  EXPECT_EQ(std::count(steps.begin(), steps.end(), "chown alice: /dev/vfio/5 && chmod 0600 /dev/vfio/5"), 1);
  EXPECT_EQ(steps.back(), "chown alice: /dev/vfio/5 && chmod 0600 /dev/vfio/5");
}

TEST_F(ForUser, GroupAlreadyGivenToSomeoneElseIsRefused) {
  fake.bind("0000:00:06.0", "vfio-pci");
  fake.set_override("0000:00:06.0", "vfio-pci");
  fake.write("/run/passvm/reserved/0000:00:06.0", "driver=nouveau\nuser=bob\n");
  auto plan = reserve({"00:06.1"}, for_alice());
  ASSERT_EQ(plan.errors.size(), 1u);
  EXPECT_NE(plan.errors[0].find("IOMMU group 5 of 0000:00:06.1 is already given to bob through 0000:00:06.0"),
            std::string::npos)
      << plan.errors[0];
}

TEST_F(ForUser, ReservingABoundDeviceAgainChangesOnlyTheOwner) {
  reserve_for_alice({"00:03.0"}, "/dev/vfio/2");
  // Without --user the owner stays.
  EXPECT_TRUE(reserve({"00:03.0"}).steps.empty());
  auto bob = ReserveOptions{.user = lookup_user(fake.sysroot(), "bob")};
  EXPECT_EQ(described(reserve({"00:03.0"}, bob)),
            (std::vector<std::string>{
                "remember previous driver 'nvme' and owner bob in /run/passvm/reserved/0000:00:03.0",
                "chown bob: /dev/vfio/2 && chmod 0600 /dev/vfio/2",
            }));
}

TEST_F(ForUser, ReleaseGivesTheNodeBackToRootBeforeUnbinding) {
  reserve_for_alice({"00:03.0"}, "/dev/vfio/2");
  auto plan = release({"00:03.0"});
  auto steps = described(plan);
  ASSERT_FALSE(steps.empty());
  EXPECT_EQ(steps[0], "chown root:root /dev/vfio/2 && chmod 0600 /dev/vfio/2");
  EXPECT_FALSE(plan.steps[0].required);
  execute(fake.sysroot(), plan, no_commands, warnings);
  EXPECT_EQ(owner("/dev/vfio/2"), (FileOwner{0, 0, 0600}));
}

TEST_F(ForUser, ReleaseKeepsTheNodeWhileTheUserHoldsAnotherDeviceOfTheGroup) {
  reserve_for_alice({"00:06.0"}, "/dev/vfio/5", true);
  auto one = release({"00:06.0"});
  for (const auto& step : described(one)) EXPECT_EQ(step.find("chown"), std::string::npos) << step;
  ASSERT_FALSE(one.notes.empty());
  EXPECT_NE(one.notes[0].find("/dev/vfio/5 stays with alice: 0000:00:06.1"), std::string::npos) << one.notes[0];
  auto both = described(release({"00:06.0", "00:06.1"}));
  EXPECT_EQ(std::count_if(both.begin(), both.end(), [](const auto& s) { return s.starts_with("chown root"); }), 1);
}

}  // namespace
}  // namespace passvm::host
