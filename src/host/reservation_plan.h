// host: reserve and release as plans: a list of sysfs writes computed first,
// executed after.
//
// Planning reads the host (devices, drivers, groups, mounts) and decides; it
// never writes. That keeps every decision testable on a fake sysfs tree and
// lets `--dry-run` show exactly the writes a user would otherwise type by hand.
// A plan with errors (unknown device, device the host needs, no IOMMU group)
// must not be executed at all: reserving half of what was asked is worse than
// nothing.
//
// Binding to vfio-pci follows the kernel's documented sequence: set
// driver_override, unbind the current driver, ask drivers_probe to bind again
// (which now only vfio-pci may do). The driver the device had, and any
// driver_override another tool had set (a device parked on pci-stub), are
// remembered in /run/passvm/reserved/<address> so release can hand both back:
// pci-stub binds only a device whose override names it. The record outlives a
// release whose bind failed, so releasing again retries the bind.
//
// Reserving for a user (--user, or user= in the config) also gives that user
// the group's /dev/vfio/GROUP (chown, mode 0600) once binding has created it,
// and records the user beside the driver. All reserved members of one group
// share one owner. Release gives the node back to root when no device of the
// group stays reserved for that user; it does so before unbinding, while the
// node still exists.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "host/pci_address.h"
#include "host/host_users.h"
#include "host/pci_inventory.h"
#include "host/sysroot.h"

namespace passvm::host {

inline constexpr std::string_view kStateDir = "/run/passvm/reserved";

struct Step {
  enum class Kind {
    Write,  // write `value` to the sysfs file `path`
    LoadModule,  // modprobe `value` (a module name or a modalias)
    SaveState,  // remember `value` as the device's previous driver, `previous_override` and `user`, in `path`
    DropState,  // forget the state file `path`
    SetOwner,  // give the VFIO group node `path` to `owner` (`user` names it; "" is root)
  };
  Kind kind;
  std::string path;
  std::string value;
  bool required = true;  // a failing optional step is a warning, not an error
  std::string user{};
  FileOwner owner{};
  std::string previous_override{};  // SaveState: the driver_override to restore on release ("" for none)

  // The shell equivalent, for --dry-run and error messages.
  std::string describe() const;
};

struct Plan {
  std::vector<Step> steps;
  std::vector<PciAddress> targets;  // devices whose end state is checked after execution
  std::vector<std::string> notes;
  std::vector<std::string> warnings;
  std::vector<std::string> errors;  // when non-empty, execute nothing
};

struct ReserveOptions {
  bool force = false;  // take devices the host needs, or without an IOMMU group
  bool with_group = false;  // also reserve IOMMU-group members still on host drivers
  std::optional<HostUser> user{};  // give the devices' VFIO groups to this user
};

Plan plan_reserve(const Sysroot& sysroot, const std::vector<HostDevice>& devices,
                  const std::vector<PciAddress>& addresses, const ReserveOptions& options);
Plan plan_release(const Sysroot& sysroot, const std::vector<HostDevice>& devices,
                  const std::vector<PciAddress>& addresses);

std::string state_path(const PciAddress& address);

// What /run/passvm/reserved/<address> says about a device we reserved.
struct Reservation {
  std::string driver;  // the driver it had before; "" when it had none
  std::string user;  // who was given its VFIO group; "" when nobody (root)
  std::string override_driver;  // the driver_override it had before, which release restores; "" when none
};
// nullopt when never reserved by us.
std::optional<Reservation> read_reservation(const Sysroot& sysroot, const PciAddress& address);
// The driver the device had before reserve; "" when it had none; nullopt when never reserved by us.
std::optional<std::string> remembered_driver(const Sysroot& sysroot, const PciAddress& address);

// Runs a command (argv) and returns its exit status; injected so tests need no modprobe.
using CommandRunner = std::function<int(const std::vector<std::string>&)>;
int run_command(const std::vector<std::string>& argv);

// Executes the steps in order; throws HostError at the first failing required step.
// Warnings for failed optional steps are appended to `warnings`.
void execute(const Sysroot& sysroot, const Plan& plan, const CommandRunner& runner,
             std::vector<std::string>& warnings);

// Problems with the end state after execution; empty when all is as planned.
std::vector<std::string> verify_reserved(const Sysroot& sysroot, const std::vector<PciAddress>& addresses);
std::vector<std::string> verify_released(const Sysroot& sysroot, const std::vector<PciAddress>& addresses);

}  // namespace passvm::host
