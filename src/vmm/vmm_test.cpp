// The lifecycle's rules, without a machine: this host may have no KVM, so booting fails, and that
// failure is itself a path under test (the VM must stay as it was).
#include "vmm/vmm.h"

#include "confine/seccomp.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>

namespace passvm {
namespace {

class VmmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("passvm-vmm-test-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    kernel_ = (dir_ / "bzImage").string();
    std::ofstream(kernel_) << "not really a kernel";
    // The host: every device there but kMissing, and RAM as host_ram_ says (0: unknown).
    vmm_.set_host_checks({.memory_bytes = [this] { return host_ram_; },
                          .device = [](const std::string& bdf) {
                            if (bdf == kMissing)
                              throw std::runtime_error(bdf + ": no such PCI device on this host; list the devices "
                                                       "with `lspci -D`");
                          }});
    loop_ = std::thread([this] { status_ = vmm_.run(std::nullopt); });
  }
  void TearDown() override {
    if (loop_.joinable()) {
      vmm_.shutdown_vmm();
      loop_.join();
    }
    std::filesystem::remove_all(dir_);
  }
  MachineConfig config() {
    MachineConfig c;
    c.kernel = kernel_;
    return c;
  }
  SlotConfig passthru(std::string host, std::string id = {}, uint32_t slot = SlotConfig::kAnySlot) {
    SlotConfig s;
    s.slot = slot;
    s.emulation = "passthru";
    s.config = std::move(host);
    s.id = std::move(id);
    return s;
  }
  static ControlError::Kind kind_of(const std::function<void()>& fn) {
    try {
      fn();
    } catch (const ControlError& e) {
      return e.kind();
    }
    ADD_FAILURE() << "no ControlError";
    return ControlError::Kind::Failed;
  }

  static constexpr const char* kMissing = "0000:0e:00.0";
  uint64_t host_ram_ = 0;  // set before the request that reads it
  std::filesystem::path dir_;
  std::string kernel_;
  Vmm vmm_{true};
  std::thread loop_;
  int status_ = -1;
};

using Kind = ControlError::Kind;

TEST_F(VmmTest, CreateFillsInTheHostBridgeIdsAndSlots) {
  EXPECT_EQ(vmm_.info().state, VmState::NotCreated);
  MachineConfig c = config();
  c.slots = {passthru("0000:03:00.0"), passthru("0000:04:00.0", "nic"), passthru("0000:05:00.0", {}, 7)};
  vmm_.create(c);
  VmInfo info = vmm_.info();
  EXPECT_EQ(info.state, VmState::Created);
  ASSERT_EQ(info.config.slots.size(), 4u);
  EXPECT_EQ(info.config.slots[0].emulation, "hostbridge");
  ASSERT_EQ(info.devices.size(), 3u);
  EXPECT_EQ(info.devices[0].id, "_vfio0");
  EXPECT_EQ(info.devices[0].bdf, "0000:00:01.0");
  EXPECT_EQ(info.devices[1].id, "nic");
  EXPECT_EQ(info.devices[1].bdf, "0000:00:02.0");
  EXPECT_EQ(info.devices[2].id, "_vfio1");
  EXPECT_EQ(info.devices[2].bdf, "0000:00:07.0");
  EXPECT_EQ(info.devices[2].host, "0000:05:00.0");
}

TEST_F(VmmTest, EachStateRefusesWhatItCannotDo) {
  EXPECT_EQ(kind_of([&] { vmm_.boot(); }), Kind::WrongState);
  EXPECT_EQ(kind_of([&] { vmm_.pause(); }), Kind::WrongState);
  EXPECT_EQ(kind_of([&] { vmm_.shutdown(); }), Kind::WrongState);
  EXPECT_EQ(kind_of([&] { vmm_.add_device("0000:03:00.0", ""); }), Kind::WrongState);
  EXPECT_EQ(kind_of([&] { vmm_.counters(); }), Kind::WrongState);
  EXPECT_EQ(kind_of([&] { vmm_.power_button(); }), Kind::WrongState);
  vmm_.create(config());
  EXPECT_EQ(kind_of([&] { vmm_.create(config()); }), Kind::WrongState);
  EXPECT_EQ(kind_of([&] { vmm_.power_button(); }), Kind::WrongState) << "no machine to press it on";
  EXPECT_EQ(kind_of([&] { vmm_.resume(); }), Kind::WrongState);
  EXPECT_EQ(kind_of([&] { vmm_.reboot(); }), Kind::WrongState);
  try {
    vmm_.pause();
    FAIL() << "paused a VM that never booted";
  } catch (const ControlError& e) {
    EXPECT_NE(std::string(e.what()).find("boot it first"), std::string::npos) << e.what();
  }
  vmm_.remove();
  EXPECT_EQ(vmm_.info().state, VmState::NotCreated);
  vmm_.remove();  // deleting nothing is fine, as in cloud-hypervisor
}

// Each refusal names the fix for what was asked, not only for the state: a second create needs a delete.
TEST_F(VmmTest, ARefusalNamesTheFixForWhatWasAsked) {
  auto message_of = [](const std::function<void()>& fn) -> std::string {
    try {
      fn();
    } catch (const ControlError& e) {
      return e.what();
    }
    return "no error";
  };
  vmm_.create(config());
  EXPECT_EQ(message_of([&] { vmm_.create(config()); }),
            "cannot create a VM that is Created: there is one VM at a time; delete it first (vm.delete)");
  EXPECT_EQ(message_of([&] { vmm_.resume(); }), "cannot resume a VM that is Created: only a paused VM resumes");
  EXPECT_EQ(message_of([&] { vmm_.pause(); }), "cannot pause a VM that is Created: boot it first (vm.boot)");
}

TEST_F(VmmTest, BadConfigsAreBadRequests) {
  MachineConfig none;
  EXPECT_EQ(kind_of([&] { vmm_.create(none); }), Kind::BadRequest);
  MachineConfig missing = config();
  missing.kernel = (dir_ / "no-such-kernel").string();
  EXPECT_EQ(kind_of([&] { vmm_.create(missing); }), Kind::BadRequest);
  MachineConfig bad_device = config();
  bad_device.slots = {passthru("not-a-device")};
  EXPECT_EQ(kind_of([&] { vmm_.create(bad_device); }), Kind::BadRequest);
  EXPECT_EQ(vmm_.info().state, VmState::NotCreated);
}

// The command line's -v, --stats, --guest-decompress and name apply to a VM vm.create describes.
TEST_F(VmmTest, AnApiVmTakesTheCommandLinesDefaults) {
  MachineConfig d;
  d.name = "web1";
  d.verbose = d.stats = true;
  d.unpack_on_host = false;
  vmm_.set_api_defaults(d);
  vmm_.create(config());
  MachineConfig c = vmm_.info().config;
  EXPECT_EQ(c.name, "web1");
  EXPECT_TRUE(c.verbose);
  EXPECT_TRUE(c.stats);
  EXPECT_FALSE(c.unpack_on_host);
}

// platform.vfio_p2p_dma: false at vm.create holds for a device added afterwards.
TEST_F(VmmTest, AnAddedDeviceTakesTheVmsPeerToPeerSetting) {
  MachineConfig c = config();
  c.p2p = false;
  vmm_.create(c);
  vmm_.add_device("0000:03:00.0", "disk");
  ASSERT_FALSE(vmm_.info().config.slots.empty());
  EXPECT_FALSE(vmm_.info().config.slots.back().p2p);
}

TEST_F(VmmTest, DevicesJoinAndLeaveACreatedVm) {
  vmm_.create(config());
  DeviceInfo a = vmm_.add_device("0000:03:00.0", "disk");
  EXPECT_EQ(a.id, "disk");
  EXPECT_EQ(a.bdf, "0000:00:01.0");
  DeviceInfo b = vmm_.add_device("0000:04:00.0", "");
  EXPECT_EQ(b.id, "_vfio0");
  EXPECT_EQ(b.bdf, "0000:00:02.0");
  EXPECT_EQ(kind_of([&] { vmm_.add_device("0000:03:00.0", "again"); }), Kind::Conflict);
  EXPECT_EQ(kind_of([&] { vmm_.add_device("0000:06:00.0", "disk"); }), Kind::Conflict);
  EXPECT_EQ(kind_of([&] { vmm_.add_device("3-0-0", ""); }), Kind::BadRequest);
  EXPECT_EQ(kind_of([&] { vmm_.remove_device("nope"); }), Kind::NotFound);
  vmm_.remove_device("disk");
  VmInfo info = vmm_.info();
  ASSERT_EQ(info.devices.size(), 1u);
  EXPECT_EQ(info.devices[0].id, "_vfio0");
  DeviceInfo c = vmm_.add_device("0000:03:00.0", "disk");  // the freed slot is taken again
  EXPECT_EQ(c.bdf, "0000:00:01.0");
}

// A device the host cannot give, or more RAM than it has, is the create's or the add's bad request, not
// the boot's failure.
TEST_F(VmmTest, WhatTheHostCannotGiveIsRefusedWhenAsked) {
  MachineConfig c = config();
  c.slots = {passthru("0000:03:00.0"), passthru(kMissing)};
  try {
    vmm_.create(c);
    ADD_FAILURE() << "created a VM with a device the host does not have";
  } catch (const ControlError& e) {
    EXPECT_EQ(e.kind(), Kind::BadRequest);
    EXPECT_NE(std::string(e.what()).find("0000:0e:00.0: no such PCI device"), std::string::npos) << e.what();
  }
  EXPECT_EQ(vmm_.info().state, VmState::NotCreated);

  host_ram_ = uint64_t{1} << 30;
  MachineConfig big = config();
  big.memory = uint64_t{2} << 30;
  try {
    vmm_.create(big);
    ADD_FAILURE() << "created a VM with twice the host's RAM";
  } catch (const ControlError& e) {
    EXPECT_EQ(e.kind(), Kind::BadRequest);
    EXPECT_NE(std::string(e.what()).find("memory.size: 2048 MiB is more than this host's 1024 MiB"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(vmm_.info().state, VmState::NotCreated);

  vmm_.create(config());
  EXPECT_EQ(kind_of([&] { vmm_.add_device(kMissing, "gone"); }), Kind::BadRequest);
  EXPECT_TRUE(vmm_.info().devices.empty());
}

TEST_F(VmmTest, AFailedBootLeavesTheVmCreated) {
  vmm_.create(config());  // a kernel that is no kernel, and perhaps no KVM at all
  try {
    vmm_.boot();
    FAIL() << "booted a text file";
  } catch (const ControlError& e) {
    EXPECT_EQ(e.kind(), Kind::Failed);
    EXPECT_FALSE(std::string(e.what()).empty());
  }
  EXPECT_EQ(vmm_.info().state, VmState::Created);
}

// The machine's messages speak of -m and -c; for a VM vm.create described they name its fields too.
TEST_F(VmmTest, ABootFailureNamesTheApiFieldsOfTheOptionsItNames) {
  MachineConfig huge = config();
  huge.memory = uint64_t{1} << 50;  // more than any host's RAM: refused before KVM is opened
  vmm_.create(huge);
  try {
    vmm_.boot();
    FAIL() << "booted a 1 PiB guest";
  } catch (const ControlError& e) {
    EXPECT_EQ(e.kind(), Kind::Failed);
    std::string what = e.what();
    EXPECT_NE(what.find("give a smaller -m (in vm.create's config, -m is memory.size)"), std::string::npos) << what;
    EXPECT_EQ(what.find("-c is"), std::string::npos) << what;
  }
}

TEST_F(VmmTest, ShutdownEndsTheLoopWithStatusZero) {
  vmm_.create(config());
  vmm_.shutdown_vmm();
  loop_.join();
  EXPECT_EQ(status_, 0);
  EXPECT_EQ(kind_of([&] { vmm_.info(); }), Kind::WrongState) << "requests after the end are refused";
}

}  // namespace
}  // namespace passvm

namespace passvm {
namespace {

TEST(ExitStatus, EachReasonHasTheStatusTheReadmeGives) {
  // README.md, "Exit status"; 6 is confine/'s, for a forbidden system call (the process exits there).
  EXPECT_EQ(exit_status(ExitReason::PowerOff), 0);
  EXPECT_EQ(exit_status(ExitReason::SetupFailed), 1);
  EXPECT_EQ(exit_status(ExitReason::Reset), 2);
  EXPECT_EQ(exit_status(ExitReason::TripleFault), 3);
  EXPECT_EQ(exit_status(ExitReason::InternalError), 4);
  EXPECT_EQ(exit_status(ExitReason::Signal), 5);
  EXPECT_EQ(exit_status(ExitReason::GuestPanic), 7);
  EXPECT_NE(exit_status(ExitReason::GuestPanic), confine::kExitSeccomp);
}

}  // namespace
}  // namespace passvm
