// vmm: Machine, one built VM — every layer put together.
//
// The constructor builds a VM from a MachineConfig in the order the hardware
// would come up (KVM, RAM, the kernel, buses, platform devices, the PCI bus
// with its passthrough devices, firmware tables, vCPUs); start() runs the
// vCPUs. Guest RAM's DMA mapping for passthrough devices goes on beside the
// guest's start, on a thread of its own; a guest's bus master enable waits for
// it (passthru/dma_ready.h). What the guest does that ends the machine
// (power-off, reset, triple fault, an internal error, a failed DMA mapping) is
// reported to guest_exit(); the owner
// (vmm.h) decides what follows. The destructor stops the vCPUs and tears
// everything down in reverse: every device stops mastering the bus, then the
// devices are reset and released side by side while guest RAM is unmapped from
// the IOMMU, then the VM closed. Teardown is RAII, so
// an exception at any setup step leaves through the same destructors.
//
// With hotplug on, the DSDT offers every slot the command line did not give
// to an emulated device, and add_device() / request_unplug() plug passthrough
// devices into a running guest through ACPI PCI hotplug (pci/hotplug.h).
//
// Threads: the owner's thread calls everything here; vCPU threads only run
// the guest (and report ejects and exits through thread-safe flags); the
// mapping thread only maps guest RAM and reports its failure as an exit.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "vmm/config.h"
#include "vmm/control.h"
#include "vmm/exit_control.h"
#include "vmm/running_machine.h"

namespace passvm {

// The host's RAM (MemTotal); 0 when it cannot be read.
uint64_t host_memory_bytes();

class Machine final : public RunningMachine {
 public:
  // What a panicking guest still prints after its pvpanic write (Linux flushes its console and prints
  // the panic's last line after the notifiers) is let out before the machine stops.
  static constexpr std::chrono::milliseconds kPanicGrace{300};

  // Throws std::runtime_error (user-facing message) or SetupInterrupted; nothing is left behind.
  Machine(const MachineConfig& config, Options options);
  ~Machine() override;
  Machine(const Machine&) = delete;
  Machine& operator=(const Machine&) = delete;

  void start() override;
  // Stops the vCPUs for good, delivers what they left queued and stops the console: after it the
  // guest's last output is out and the counters are final. The destructor does it if nobody did.
  void stop() override;
  void pause() override;
  void resume() override;
  // Delivers writes KVM coalesced and writes the console's buffered output: a guest that writes and then
  // only halts would keep them queued.
  void drain() override;
  // Raises the interrupts of devices that follow the clock (the RTC's update and alarm), and ends the
  // machine once a panicked guest's grace is over (guest_panicked()). The control loop calls it every
  // 50 ms when idle.
  void tick() override;

  // Why the guest ended the machine, once it did.
  ExitControl& guest_exit() override;
  // The guest said through its pvpanic device that it panicked; guest_exit() has GuestPanic once
  // kPanicGrace has passed (tick() sees to it), unless the guest ended the machine first (a reboot
  // right after its panic, panic=-1), and panic_detail() says how it said so.
  bool guest_panicked() const override;
  static std::string panic_detail();

  // The config with every device now in the VM (slots and ids filled in).
  const MachineConfig& config() const override;
  std::vector<DeviceInfo> devices() const override;
  std::optional<int> slot_of(const std::string& id) const override;  // of a passthrough device

  // Opens `slot` (its slot kAnySlot: the lowest free hotplug slot) and presents it to the guest.
  // Throws ControlError.
  DeviceInfo add_device(SlotConfig slot) override;
  // Presses the ACPI power button: a guest that listens shuts down cleanly (and powers off, which ends
  // the machine as usual). Returns whether it had enabled the power button event.
  bool press_power_button() override;
  // Sends an NMI to every vCPU (through its local APIC, without stopping it). Returns how many took it:
  // one whose APIC the guest disabled does not.
  uint32_t send_nmi() override;
  // Asks the guest to eject the device in `slot`.
  void request_unplug(int slot) override;
  // Slots the guest ejected since the last call.
  std::vector<int> take_ejected() override;
  // Releases the device in `slot` (after the guest ejected it): the vCPUs are paused while it leaves
  // the bus and is disconnected (no vCPU may be inside its traps then), then run again while it is
  // reset and closed; its IOMMU group is given back to the host last.
  void remove_device(int slot) override;

  Counters counters() const override;
  // What --stats prints: guest RAM's residency and page sizes, exits per vCPU and by address, each
  // device's own counters.
  std::string stats_text() const override;
  // The same once the machine has stopped (stop()), for the last time: it releases the passthrough
  // devices and guest RAM's DMA mapping first (as the destructor would), because guest RAM's page sizes
  // come from /proc/self/smaps, and the kernel reads a pinned huge page there a 4 KiB piece at a time
  // (0.2-0.5 s of an 8 GiB guest's exit in the lab) but an unpinned one at once.
  std::string final_stats_text() override;

  // For a guest that stopped by itself (reset, triple fault) before printing a byte on any console
  // passvm shows: why its messages are missing and how to see them (vmm/console_hint.h). Empty when it
  // printed, or when there is nothing to suggest. Call after stop(), which delivers its last output.
  std::string silent_stop_hint() const override;

 private:
  std::string ram_stats_text() const;
  std::string device_stats_text() const;  // the rest: exits, COM1, the bridge, passthrough devices

  struct Parts;
  std::unique_ptr<Parts> p_;
};

}  // namespace passvm
