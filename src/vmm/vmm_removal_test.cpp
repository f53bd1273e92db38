// The Vmm's rules for a running VM (removing a device, the guest's own eject, a reset), against a
// machine that needs no KVM: FakeMachine does what the Vmm asks and lets the test play the guest.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "vmm/vmm.h"

namespace passvm {
namespace {

using namespace std::chrono_literals;

// What the test controls and observes; it outlives each machine.
struct FakeGuest {
  std::mutex lock;
  bool ejects = true;          // the guest ejects a device as soon as it is asked
  std::string release_error;   // what releasing an ejected device throws, when set
  std::vector<int> unplug_requests, ejected, released;
  int built = 0, destroyed = 0;
  ExitControl* exit = nullptr;  // the running machine's

  void set(bool ejects_when_asked, std::string error = {}) {
    std::lock_guard g(lock);
    ejects = ejects_when_asked;
    release_error = std::move(error);
  }
  std::vector<int> released_slots() {
    std::lock_guard g(lock);
    return released;
  }
  void eject(int slot) {
    std::lock_guard g(lock);
    ejected.push_back(slot);
  }
  size_t requests() {
    std::lock_guard g(lock);
    return unplug_requests.size();
  }
  int machines_built() {
    std::lock_guard g(lock);
    return built;
  }
  void end_machine(ExitReason why) {
    std::lock_guard g(lock);
    exit->request(why, "asked by the test");
  }
};

class FakeMachine final : public RunningMachine {
 public:
  FakeMachine(const MachineConfig& config, FakeGuest& guest) : config_(config), guest_(guest) {
    std::lock_guard g(guest_.lock);
    guest_.built++;
    guest_.exit = &exit_;
  }
  ~FakeMachine() override {
    std::lock_guard g(guest_.lock);
    guest_.destroyed++;
    guest_.exit = nullptr;
  }
  void start() override {}
  void stop() override {}
  void pause() override {}
  void resume() override {}
  void drain() override {}
  void tick() override {}
  ExitControl& guest_exit() override { return exit_; }
  bool guest_panicked() const override { return false; }
  const MachineConfig& config() const override { return config_; }
  std::vector<DeviceInfo> devices() const override {
    std::vector<DeviceInfo> out;
    for (const auto& s : config_.slots)
      if (s.emulation == "passthru") out.push_back({s.id, guest_bdf(s.slot, s.func), s.config});
    return out;
  }
  std::optional<int> slot_of(const std::string& id) const override {
    for (const auto& s : config_.slots)
      if (s.emulation == "passthru" && s.id == id) return static_cast<int>(s.slot);
    return std::nullopt;
  }
  DeviceInfo add_device(SlotConfig slot) override {
    for (slot.slot = 1; std::any_of(config_.slots.begin(), config_.slots.end(),
                                    [&](const SlotConfig& s) { return s.slot == slot.slot; });)
      slot.slot++;
    config_.slots.push_back(slot);
    return {slot.id, guest_bdf(slot.slot, 0), slot.config};
  }
  bool press_power_button() override { return true; }
  uint32_t send_nmi() override { return config_.cpus; }
  void request_unplug(int slot) override {
    std::lock_guard g(guest_.lock);
    guest_.unplug_requests.push_back(slot);
    if (guest_.ejects) guest_.ejected.push_back(slot);
  }
  std::vector<int> take_ejected() override {
    std::lock_guard g(guest_.lock);
    return std::exchange(guest_.ejected, {});
  }
  void remove_device(int slot) override {
    std::lock_guard g(guest_.lock);
    if (!guest_.release_error.empty()) throw std::runtime_error(guest_.release_error);
    std::erase_if(config_.slots, [&](const SlotConfig& s) { return static_cast<int>(s.slot) == slot; });
    guest_.released.push_back(slot);
  }
  Counters counters() const override { return {}; }
  std::string stats_text() const override { return ""; }
  std::string final_stats_text() override { return ""; }
  std::string silent_stop_hint() const override { return ""; }

 private:
  MachineConfig config_;
  FakeGuest& guest_;
  ExitControl exit_;
};

// Short enough for a unit test, long enough that a loop slowed by a loaded host (sanitizers, the lab
// beside) still answers a prompt eject as done.
constexpr VmmTiming kTiming{.remove_answer = 1000ms, .eject_wait = 3000ms, .eject_nudge = 1000ms};

class VmmRemovalTest : public ::testing::Test {
 protected:
  virtual VmmTiming timing() const { return kTiming; }
  void SetUp() override {
    kernel_ = std::filesystem::temp_directory_path() / ("passvm-vmm-removal-" + std::to_string(getpid()));
    std::ofstream(kernel_) << "never booted: the machine is a fake";
    vmm_ = std::make_unique<Vmm>(
        true,
        [this](const MachineConfig& c, const RunningMachine::Options&) -> std::unique_ptr<RunningMachine> {
          return std::make_unique<FakeMachine>(c, guest_);
        },
        timing());
    vmm_->set_host_checks({});  // the fake machine's devices are on no host
    loop_ = std::thread([this] { vmm_->run(std::nullopt); });
    MachineConfig c;
    c.kernel = kernel_.string();
    SlotConfig nvme;
    nvme.slot = 4;
    nvme.emulation = "passthru";
    nvme.config = "0000:00:03.0";
    nvme.id = "nvme";
    c.slots.push_back(nvme);
    vmm_->create(c);
    vmm_->boot();
  }
  void TearDown() override {
    vmm_->shutdown_vmm();
    loop_.join();
    std::filesystem::remove(kernel_);
    EXPECT_EQ(guest_.built, guest_.destroyed) << "every machine was torn down";
  }
  bool listed(const std::string& id) {
    auto devices = vmm_->info().devices;
    return std::any_of(devices.begin(), devices.end(), [&](const DeviceInfo& d) { return d.id == id; });
  }
  // Polls `done` on the test's thread, for at most 5 s.
  static bool eventually(const std::function<bool()>& done) {
    for (auto until = std::chrono::steady_clock::now() + 5s; std::chrono::steady_clock::now() < until;) {
      if (done()) return true;
      std::this_thread::sleep_for(10ms);
    }
    return done();
  }

  FakeGuest guest_;
  std::unique_ptr<Vmm> vmm_;
  std::filesystem::path kernel_;
  std::thread loop_;
};

TEST_F(VmmRemovalTest, AnEjectedDeviceIsReleasedBeforeTheAnswer) {
  EXPECT_EQ(vmm_->remove_device("nvme"), Removal::Done);
  EXPECT_EQ(guest_.released_slots(), std::vector<int>{4});
  EXPECT_FALSE(listed("nvme"));
  try {
    vmm_->remove_device("nvme");
    ADD_FAILURE() << "a removed device was found again";
  } catch (const ControlError& e) {
    EXPECT_EQ(e.kind(), ControlError::Kind::NotFound);
  }
}

// A removal asked of a paused VM answers at once, and the guest's time to eject runs only once it
// resumes: paused longer than that time, it is still asked, and the device goes when it ejects.
TEST_F(VmmRemovalTest, ARemovalAskedWhilePausedWaitsForTheResume) {
  guest_.set(false);
  vmm_->pause();
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(vmm_->remove_device("nvme"), Removal::Pending);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, kTiming.remove_answer) << "no wait for a guest that cannot act";
  EXPECT_EQ(vmm_->info().state, VmState::Paused) << "asking does not resume the VM";
  std::this_thread::sleep_for(kTiming.eject_wait + 300ms);
  const size_t asked_while_paused = guest_.requests();
  EXPECT_EQ(asked_while_paused, 1u) << "not asked again while paused";
  vmm_->resume();
  EXPECT_TRUE(eventually([&] { return guest_.requests() > asked_while_paused; })) << "asked again on resume";
  EXPECT_TRUE(listed("nvme"));
  guest_.eject(4);
  EXPECT_TRUE(eventually([&] { return !listed("nvme"); })) << "the removal was still pending after the pause";
  EXPECT_EQ(guest_.released_slots(), std::vector<int>{4});
}

TEST_F(VmmRemovalTest, AGuestSlowToEjectGetsAPendingAnswerIsAskedAgainAndLetsGoLater) {
  guest_.set(false);
  EXPECT_EQ(vmm_->remove_device("nvme"), Removal::Pending);
  EXPECT_TRUE(listed("nvme")) << "the device stays until the guest lets go";
  // Asking again joins the removal under way rather than failing.
  EXPECT_EQ(vmm_->remove_device("nvme"), Removal::Pending);
  EXPECT_TRUE(eventually([&] { return guest_.requests() >= 2; })) << "a pending eject is signalled again";
  guest_.eject(4);
  EXPECT_TRUE(eventually([&] { return !listed("nvme"); }));
  EXPECT_EQ(guest_.released_slots(), std::vector<int>{4});
}

TEST_F(VmmRemovalTest, AGuestThatNeverEjectsKeepsTheDeviceAndIsNoLongerAsked) {
  guest_.set(false);
  auto asked = std::chrono::steady_clock::now();
  EXPECT_EQ(vmm_->remove_device("nvme"), Removal::Pending);
  std::this_thread::sleep_until(asked + kTiming.eject_wait + 500ms);
  size_t requests = guest_.requests();
  EXPECT_GE(requests, 2u);
  std::this_thread::sleep_for(3 * kTiming.eject_nudge);
  EXPECT_EQ(guest_.requests(), requests) << "asked again after the removal gave up";
  EXPECT_TRUE(listed("nvme"));
  EXPECT_TRUE(guest_.released_slots().empty());
  // A new request starts a new removal: the guest is asked at once.
  guest_.set(true);
  EXPECT_EQ(vmm_->remove_device("nvme"), Removal::Done);
}

TEST_F(VmmRemovalTest, AShutdownCompletesAPendingRemovalAndTheNextBootHasNoDevice) {
  guest_.set(false);
  EXPECT_EQ(vmm_->remove_device("nvme"), Removal::Pending);
  vmm_->shutdown();
  EXPECT_EQ(vmm_->info().state, VmState::Shutdown);
  EXPECT_FALSE(listed("nvme"));
  vmm_->boot();
  EXPECT_FALSE(listed("nvme")) << "a device removed by the teardown came back";
  EXPECT_EQ(guest_.machines_built(), 2);
}

TEST_F(VmmRemovalTest, AReleaseThatFailsIsTheRequestsError) {
  guest_.set(true, "the device did not come back from its reset");
  try {
    vmm_->remove_device("nvme");
    ADD_FAILURE() << "the failed release was not reported";
  } catch (const ControlError& e) {
    EXPECT_EQ(e.kind(), ControlError::Kind::Failed);
    EXPECT_NE(std::string(e.what()).find("releasing the device failed: the device did not come back"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(VmmRemovalTest, AnEjectTheHostDidNotAskForRemovesTheDevice) {
  guest_.eject(4);
  EXPECT_TRUE(eventually([&] { return !listed("nvme"); }));
  EXPECT_EQ(guest_.requests(), 0u);
}

TEST_F(VmmRemovalTest, AHotAddedDeviceCanBeRemoved) {
  DeviceInfo d = vmm_->add_device("0000:00:04.0", "nic");
  EXPECT_EQ(d.id, "nic");
  EXPECT_TRUE(listed("nic"));
  EXPECT_EQ(vmm_->remove_device("nic"), Removal::Done);
  EXPECT_FALSE(listed("nic"));
  EXPECT_TRUE(listed("nvme"));
}

TEST_F(VmmRemovalTest, AGuestResetOrTripleFaultBuildsANewMachineAndAPowerOffLeavesTheVmShutDown) {
  guest_.end_machine(ExitReason::Reset);
  EXPECT_TRUE(eventually([&] { return guest_.machines_built() == 2; }));
  EXPECT_TRUE(eventually([&] { return vmm_->info().state == VmState::Running; }));
  EXPECT_TRUE(listed("nvme")) << "a reboot keeps the VM's devices";
  guest_.end_machine(ExitReason::TripleFault);  // as cloud-hypervisor and QEMU: a reset too
  EXPECT_TRUE(eventually([&] { return guest_.machines_built() == 3; }));
  EXPECT_TRUE(eventually([&] { return vmm_->info().state == VmState::Running; }));
  guest_.end_machine(ExitReason::PowerOff);
  EXPECT_TRUE(eventually([&] { return vmm_->info().state == VmState::Shutdown; }));
  EXPECT_EQ(guest_.machines_built(), 3);
}

// A guest that keeps resetting soon after its boot: two reboots at once, then waits of 100 and 200 ms.
class VmmRebootLoopTest : public VmmRemovalTest {
 protected:
  VmmTiming timing() const override {
    VmmTiming t = kTiming;
    t.quick_run = 10s;
    t.quick_reboots = 2;
    t.first_delay = held_;
    t.max_delay = 2 * held_;
    return t;
  }
  // Resets the guest and waits for the machine after it; returns how long that took.
  std::chrono::steady_clock::duration reset_and_wait_for_reboot() {
    const int built = guest_.machines_built();
    const auto t0 = std::chrono::steady_clock::now();
    guest_.end_machine(ExitReason::Reset);
    EXPECT_TRUE(eventually([&] { return guest_.machines_built() == built + 1; }));
    return std::chrono::steady_clock::now() - t0;
  }
  static int count(const std::string& text, const std::string& what) {
    int n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) n++;
    return n;
  }
  std::chrono::milliseconds held_ = 100ms;
};

TEST_F(VmmRebootLoopTest, AGuestThatKeepsResettingIsRebootedAfterGrowingWaitsAndSaysSoAFewTimes) {
  testing::internal::CaptureStderr();
  std::vector<std::chrono::steady_clock::duration> took;
  for (int i = 0; i < 16; i++) took.push_back(reset_and_wait_for_reboot());
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_GE(took[2], 100ms) << "the third quick reset in a row was rebooted at once";
  EXPECT_GE(took[3], 200ms) << "the wait did not grow";
  EXPECT_GE(took[15], 200ms) << "the wait stopped";
  EXPECT_EQ(count(said, "rebooting\n"), 2) << said;
  EXPECT_EQ(count(said, "asked by the test"), 11) << "each reset said with its reboot: " << said;
  // Resets 3 to 10 say so, then only the 16th (a power of two).
  EXPECT_EQ(count(said, "times in a row"), 9) << said;
  EXPECT_NE(said.find("reset 16 times in a row, each within 10 s of its boot; rebooting in 0.2 s"), std::string::npos)
      << said;
  EXPECT_EQ(vmm_->info().state, VmState::Running);
}

class VmmHeldRebootTest : public VmmRebootLoopTest {
 protected:
  void SetUp() override {
    held_ = 1000ms;
    VmmRebootLoopTest::SetUp();
    reset_and_wait_for_reboot();
    reset_and_wait_for_reboot();
    guest_.end_machine(ExitReason::Reset);
    EXPECT_TRUE(eventually([&] { return vmm_->info().state == VmState::Shutdown; }))
        << "the VM is shut down while its reboot is held back";
    EXPECT_EQ(guest_.machines_built(), 3);
  }
};

TEST_F(VmmHeldRebootTest, AShutdownCancelsIt) {
  vmm_->shutdown();
  std::this_thread::sleep_for(held_ + 500ms);
  EXPECT_EQ(guest_.machines_built(), 3) << "the cancelled reboot happened";
  EXPECT_EQ(vmm_->info().state, VmState::Shutdown);
  vmm_->boot();
  EXPECT_EQ(vmm_->info().state, VmState::Running);
}

TEST_F(VmmHeldRebootTest, ABootBootsNowOnceAndStartsTheCountAgain) {
  vmm_->boot();
  EXPECT_EQ(guest_.machines_built(), 4);
  std::this_thread::sleep_for(held_ + 500ms);
  EXPECT_EQ(guest_.machines_built(), 4) << "the held-back reboot happened as well";
  testing::internal::CaptureStderr();
  reset_and_wait_for_reboot();
  const std::string said = testing::internal::GetCapturedStderr();
  EXPECT_NE(said.find("rebooting\n"), std::string::npos) << "not rebooted at once after the user's boot: " << said;
}

}  // namespace
}  // namespace passvm
