// api (tests): FakeControl, a VmControl without a machine, for the API's tests.
//
// It keeps control.h's state machine (create -> boot -> pause/resume/reboot -> shutdown -> delete)
// and its device rules (ids "_vfioN" when none is given, 409 for a taken id or host device, guest
// addresses only while the VM runs), records every call, and can be told to throw a ControlError of
// any kind on its next call. It is called from the server's request threads, hence the lock.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "vmm/control.h"

namespace passvm::testing {

class FakeControl : public VmControl {
 public:
  using Kind = ControlError::Kind;

  // The next call (other than info) throws this and changes nothing.
  void fail_next(Kind kind, const std::string& message) {
    std::lock_guard g(lock_);
    fail_.emplace(kind, message);
  }
  // The next call throws this plain exception, as a buggy machine might.
  void crash_next() {
    std::lock_guard g(lock_);
    crash_ = true;
  }
  // A guest slow to eject: removals of a running VM answer Pending, and the device leaves after `polls`
  // more info() calls (never when not positive).
  void eject_after_polls(int polls) {
    std::lock_guard g(lock_);
    eject_after_polls_ = polls;
  }
  std::vector<std::string> calls() const {
    std::lock_guard g(lock_);
    return calls_;
  }
  MachineConfig config() const {
    std::lock_guard g(lock_);
    return config_;
  }
  VmState state() const {
    std::lock_guard g(lock_);
    return state_;
  }
  bool vmm_shutdown_requested() const {
    std::lock_guard g(lock_);
    return vmm_shutdown_;
  }

  void create(const MachineConfig& config) override {
    auto guard = enter("create");
    if (state_ != VmState::NotCreated) throw ControlError(Kind::WrongState, "the VM is already created");
    config_ = config;
    state_ = VmState::Created;
  }
  void boot() override {
    auto guard = enter("boot");
    if (state_ == VmState::NotCreated) throw ControlError(Kind::WrongState, "the VM is not created");
    if (state_ != VmState::Created && state_ != VmState::Shutdown)
      throw ControlError(Kind::WrongState, "the VM is already booted");
    for (auto& s : config_.slots)
      if (s.emulation == "passthru") plug(s);
    state_ = VmState::Running;
  }
  void pause() override {
    auto guard = enter("pause");
    if (state_ != VmState::Running) throw ControlError(Kind::WrongState, "the VM is not running");
    state_ = VmState::Paused;
  }
  void resume() override {
    auto guard = enter("resume");
    if (state_ != VmState::Paused) throw ControlError(Kind::WrongState, "the VM is not paused");
    state_ = VmState::Running;
  }
  void reboot() override {
    auto guard = enter("reboot");
    if (state_ != VmState::Running && state_ != VmState::Paused)
      throw ControlError(Kind::WrongState, "the VM is not booted");
    state_ = VmState::Running;
  }
  void shutdown() override {
    auto guard = enter("shutdown");
    if (state_ != VmState::Running && state_ != VmState::Paused)
      throw ControlError(Kind::WrongState, "the VM is not booted");
    devices_.clear();
    state_ = VmState::Shutdown;
  }
  void power_button() override {
    auto guard = enter("power_button");
    if (state_ != VmState::Running && state_ != VmState::Paused)
      throw ControlError(Kind::WrongState, "the VM is not booted");
  }
  void nmi() override {
    auto guard = enter("nmi");
    if (state_ != VmState::Running && state_ != VmState::Paused)
      throw ControlError(Kind::WrongState, "the VM is not booted");
  }
  void remove() override {
    auto guard = enter("remove");
    config_ = {};
    devices_.clear();
    state_ = VmState::NotCreated;
  }
  VmInfo info() override {
    std::lock_guard g(lock_);
    for (auto it = ejecting_.begin(); it != ejecting_.end();) {
      if (it->second > 0 && --it->second == 0) {
        drop(it->first);
        it = ejecting_.erase(it);
      } else {
        ++it;
      }
    }
    return {state_, config_, devices_};
  }
  DeviceInfo add_device(const std::string& host, const std::string& id) override {
    auto guard = enter(fmt::format("add_device {} {}", host, id));
    if (state_ == VmState::NotCreated) throw ControlError(Kind::WrongState, "the VM is not created");
    for (const auto& s : config_.slots) {
      if (!id.empty() && s.id == id) throw ControlError(Kind::Conflict, fmt::format("id '{}' is taken", id));
      if (s.config == host) throw ControlError(Kind::Conflict, fmt::format("{} is already in this VM", host));
    }
    SlotConfig s;
    s.slot = SlotConfig::kAnySlot;
    s.emulation = "passthru";
    s.config = host;
    s.id = id.empty() ? fmt::format("_vfio{}", next_id_++) : id;
    config_.slots.push_back(s);
    if (state_ != VmState::Running && state_ != VmState::Paused) return {s.id, "", host};
    return plug(config_.slots.back());
  }
  Removal remove_device(const std::string& id) override {
    auto guard = enter("remove_device " + id);
    if (state_ == VmState::NotCreated) throw ControlError(Kind::WrongState, "the VM is not created");
    auto& slots = config_.slots;
    if (std::none_of(slots.begin(), slots.end(), [&](const SlotConfig& s) { return s.id == id; }))
      throw ControlError(Kind::NotFound, fmt::format("no device '{}' in this VM", id));
    if (eject_after_polls_ && state_ == VmState::Running) {
      ejecting_.emplace(id, *eject_after_polls_);  // asking again keeps the first countdown
      return Removal::Pending;
    }
    drop(id);
    return Removal::Done;
  }
  Counters counters() override {
    auto guard = enter("counters");
    if (state_ != VmState::Running && state_ != VmState::Paused)
      throw ControlError(Kind::WrongState, "the VM is not running");
    return {{"vcpu0", {{"exits", 42}, {"io_exits", 7}}}, {"nvme0", {{"bar_reads", 3}}}};
  }
  void shutdown_vmm() override {
    auto guard = enter("shutdown_vmm");
    vmm_shutdown_ = true;
    devices_.clear();
    state_ = VmState::NotCreated;
  }

 private:
  // Records the call and applies a pending failure; the lock it returns is held for the rest of the call.
  std::unique_lock<std::mutex> enter(const std::string& call) {
    std::unique_lock guard(lock_);
    calls_.push_back(call);
    if (auto fail = std::exchange(fail_, std::nullopt)) throw *fail;
    if (std::exchange(crash_, false)) throw std::runtime_error("the fake machine crashed");
    return guard;
  }
  void drop(const std::string& id) {
    std::erase_if(config_.slots, [&](const SlotConfig& s) { return s.id == id; });
    std::erase_if(devices_, [&](const DeviceInfo& d) { return d.id == id; });
  }
  // Guest slots from 3: the host bridge and two emulated devices come first, as in a real passvm.
  DeviceInfo plug(SlotConfig& s) {
    s.slot = next_slot_++;
    DeviceInfo d{s.id, fmt::format("0000:00:{:02x}.0", s.slot), s.config};
    devices_.push_back(d);
    return d;
  }

  mutable std::mutex lock_;
  std::vector<std::string> calls_;
  std::optional<ControlError> fail_;
  bool crash_ = false;
  VmState state_ = VmState::NotCreated;
  MachineConfig config_;
  std::vector<DeviceInfo> devices_;
  bool vmm_shutdown_ = false;
  int next_id_ = 0;
  std::optional<int> eject_after_polls_;
  std::map<std::string, int> ejecting_;  // id -> info() calls left before the guest lets go
  uint32_t next_slot_ = 3;
};

}  // namespace passvm::testing
