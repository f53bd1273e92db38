// vmm: what a VMM can be asked to do with its one VM, by the API or the command line.
//
// VmControl is the VMM as a control plane sees it: a VM that is created from a
// MachineConfig, booted, paused, resumed, rebooted, shut down and deleted, and
// whose passthrough devices can be added and removed while it runs. The HTTP
// API (src/api) translates requests into these calls; the machine
// (vmm/vmm.h) implements them. Every call is synchronous and may be made from
// any thread; implementations serialise them. A call that cannot be honoured
// throws ControlError and leaves the VM as it was.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "vmm/config.h"

namespace passvm {

// The states and their names are cloud-hypervisor's (vm.info "state").
enum class VmState { NotCreated, Created, Running, Paused, Shutdown };

inline const char* state_name(VmState s) {
  switch (s) {
    case VmState::NotCreated: return "NotCreated";
    case VmState::Created: return "Created";
    case VmState::Running: return "Running";
    case VmState::Paused: return "Paused";
    case VmState::Shutdown: return "Shutdown";
  }
  return "?";
}

// Why a request failed. `kind` decides the HTTP status; `what()` is the message for people, naming
// the problem and the fix.
class ControlError : public std::runtime_error {
 public:
  enum class Kind {
    BadRequest,  // the request itself is wrong or asks for something passvm does not do (400)
    WrongState,  // the VM is not in a state that allows it (e.g. boot before create)
    NotFound,    // no such device id
    Conflict,    // the id or the slot is taken, the device is already in this VM
    Failed,      // the host refused (device not reserved, in use, group not viable, guest did not eject)
  };
  ControlError(Kind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

// A function of the guest's bus 0 as cloud-hypervisor names it: "0000:00:05.0".
inline std::string guest_bdf(uint32_t slot, uint32_t func) { return fmt::format("0000:00:{:02x}.{}", slot, func); }

// A passthrough device as the VM has it.
struct DeviceInfo {
  std::string id;       // the caller's id, or "_vfioN" when none was given
  std::string bdf;      // the guest's address, "0000:00:05.0"
  std::string host;     // the host device, "0000:00:03.0"
};

struct VmInfo {
  VmState state = VmState::NotCreated;
  MachineConfig config;               // as created, with devices added since (slot and id filled in)
  std::vector<DeviceInfo> devices;    // passthrough devices, in slot order
};

// What remove_device() could say before it answered.
enum class Removal {
  Done,     // the guest ejected the device (reset and released), or it left the config of a VM not running
  Pending,  // the guest has been asked and not let go yet: the device leaves when it does
};

// Counters by device name, then counter name (the --stats figures).
using Counters = std::map<std::string, std::map<std::string, uint64_t>>;

class VmControl {
 public:
  virtual ~VmControl() = default;

  // NotCreated -> Created. The config is checked (kernel readable, slots free) but nothing is opened.
  virtual void create(const MachineConfig& config) = 0;
  // Created or Shutdown -> Running: builds the machine (devices opened, RAM mapped) and starts the vCPUs.
  virtual void boot() = 0;
  virtual void pause() = 0;   // Running -> Paused: vCPUs stop; devices keep their DMA mappings
  virtual void resume() = 0;  // Paused -> Running
  // Running or Paused -> Running: the machine is torn down and built again from the config.
  virtual void reboot() = 0;
  // Running or Paused -> Shutdown: the machine is torn down (devices reset and released); the config stays.
  virtual void shutdown() = 0;
  // Running or Paused: presses the guest's ACPI power button, a request to shut down that the guest may
  // honour (it powers off: Shutdown) or ignore. The state does not change here.
  virtual void power_button() = 0;
  // Running or Paused: sends a non-maskable interrupt to every vCPU, a physical machine's NMI button: a
  // hung guest set up for it (Linux's kernel.unknown_nmi_panic=1, kdump) panics and dumps; others log
  // it. A paused VM takes it when resumed. The state does not change here.
  virtual void nmi() = 0;
  // Any state -> NotCreated: shuts down first if needed and forgets the config.
  virtual void remove() = 0;
  virtual VmInfo info() = 0;
  // Created: the device joins the config. Running or Paused: it is opened, mapped and hot-plugged into a
  // free slot (the guest sees it once running). `host` is a BDF; `id` may be empty.
  virtual DeviceInfo add_device(const std::string& host, const std::string& id) = 0;
  // Running: asks the guest to eject the device and waits a few seconds for it: Done once the
  // guest ejected it and it is reset and released. Pending when the guest has not let go by then (clients
  // such as Kata give the call 5 s): the device stays, listed, until the guest ejects it, the machine is
  // torn down (shutdown, reboot: it does not come back), or the host gives up asking after a while (it
  // stays then). Asking again for a pending device waits again. Created or Shutdown: drops it from the
  // config (Done).
  virtual Removal remove_device(const std::string& id) = 0;
  virtual Counters counters() = 0;
  // Asks the VMM process to end (after replying): the VM is shut down first.
  virtual void shutdown_vmm() = 0;
};

}  // namespace passvm
