// vmm: RunningMachine, what the Vmm (vmm.h) drives of a built VM.
//
// Machine (machine.h) is the one real implementation; the Vmm creates its
// machines through a factory so that its lifecycle rules (states, pending
// removals, reboots) can be tested against a machine that needs no KVM, no
// device and no guest. Every call here comes from the Vmm's loop thread; see
// machine.h for what each one does and for its threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vmm/config.h"
#include "vmm/control.h"
#include "vmm/exit_control.h"

namespace passvm {

class RunningMachine {
 public:
  struct Options {
    bool hotplug = false;
    // Checked between setup steps: true stops the setup with SetupInterrupted.
    std::function<bool()> interrupted;
    // Ctrl-A x on the console.
    std::function<void()> on_console_quit;
    // The guest asked to end the machine (guest_exit() has the reason); from a vCPU's or device's thread.
    std::function<void()> on_guest_exit;
    // A guest's panic (pvpanic) ends the machine, kPanicGrace after the guest said so; otherwise it is
    // only reported and the guest runs on (cloud-hypervisor's way, for the API).
    bool stop_on_panic = true;
  };
  struct SetupInterrupted {};

  virtual ~RunningMachine() = default;

  virtual void start() = 0;
  virtual void stop() = 0;
  virtual void pause() = 0;
  virtual void resume() = 0;
  virtual void drain() = 0;
  virtual void tick() = 0;

  virtual ExitControl& guest_exit() = 0;
  virtual bool guest_panicked() const = 0;

  virtual const MachineConfig& config() const = 0;
  virtual std::vector<DeviceInfo> devices() const = 0;
  virtual std::optional<int> slot_of(const std::string& id) const = 0;

  virtual DeviceInfo add_device(SlotConfig slot) = 0;
  virtual bool press_power_button() = 0;
  virtual uint32_t send_nmi() = 0;
  virtual void request_unplug(int slot) = 0;
  virtual std::vector<int> take_ejected() = 0;
  virtual void remove_device(int slot) = 0;

  virtual Counters counters() const = 0;
  virtual std::string stats_text() const = 0;
  virtual std::string final_stats_text() = 0;
  virtual std::string silent_stop_hint() const = 0;
};

// Builds a machine from its config (Machine's constructor, by default); throws what it throws.
using MachineFactory =
    std::function<std::unique_ptr<RunningMachine>(const MachineConfig&, const RunningMachine::Options&)>;

}  // namespace passvm
