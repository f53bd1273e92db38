// vmm: Vmm, the process's one VM and its lifecycle.
//
// run() is the control loop, on the thread that calls it (passvm's main
// thread): it builds and tears down Machines, delivers coalesced writes, and
// reacts to what the guest does (power-off, reset, ejecting a device) and to
// signals. The VmControl calls (the API's requests, from the API server's
// threads) are queued to that loop and wait for their result, so a machine is
// only ever touched by one thread. The states are cloud-hypervisor's:
//
//   NotCreated --create--> Created --boot--> Running <--pause/resume--> Paused
//                                      ^        |  reboot: torn down, built again
//                           boot       |        v  shutdown, or the guest powers off
//                                      +---- Shutdown        delete: back to NotCreated
//
// Without the API (the plain command line) the loop ends when the guest does,
// with the exit status of exit_control.h. With it, the process lives until
// vmm.shutdown or a signal; a guest reset or triple fault reboots the VM (after a growing
// wait if it keeps resetting soon after its boot: see VmmTiming), a power-off
// leaves it Shutdown. remove_device() asks the guest to eject and answers when it did,
// or after a while (VmmTiming) with the removal pending; the loop keeps
// asking for longer, and a teardown meanwhile completes the removal. A paused
// guest cannot eject: a removal asked then answers pending at once, and its
// time to eject counts from the resume. An eject the host
// did not ask for (the guest's own "echo 0 > /sys/bus/pci/slots/N/power")
// removes the device too.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>

#include "vmm/config.h"
#include "vmm/control.h"
#include "vmm/exit_control.h"
#include "vmm/running_machine.h"
#include "vmm/signals.h"

namespace passvm {

// How long a removal of a device is waited for and asked again, and how a guest that keeps resetting
// is rebooted (shorter in tests).
struct VmmTiming {
  // How long remove_device() waits for the eject before it answers Pending: inside the 5 s Kata gives
  // its hotplug calls. Most ejects take one or two seconds.
  std::chrono::milliseconds remove_answer{std::chrono::seconds(4)};
  // How long the guest is asked; after that the device stays until the guest lets go of it.
  std::chrono::milliseconds eject_wait{std::chrono::seconds(30)};
  // An eject request raised before the guest's hotplug driver listens (a device removed while the guest
  // boots) reaches no one; the request stays in the slot's register, and is signalled again this often.
  std::chrono::milliseconds eject_nudge{std::chrono::seconds(3)};
  // A guest that resets sooner than quick_run after its boot, again and again (a kernel that panics
  // during its boot with panic=-1), is in a reboot loop: the first quick_reboots are done at once, the
  // next ones after a wait that doubles from first_delay up to max_delay, as an orchestrator's restart
  // backoff does, so a broken guest costs the host little and its messages stay few.
  std::chrono::milliseconds quick_run{std::chrono::seconds(30)};
  int quick_reboots = 3;
  std::chrono::milliseconds first_delay{std::chrono::seconds(1)};
  std::chrono::milliseconds max_delay{std::chrono::seconds(60)};
};

// What vm.create and vm.add-device check of the host before they accept a VM or a device, so that a
// request naming a device the host cannot give is refused then, not at the boot (tests use their own).
struct HostChecks {
  std::function<uint64_t()> memory_bytes;                 // the host's RAM; 0 when unknown
  std::function<void(const std::string& bdf)> device;     // throws naming the problem and its fix
};

class Vmm final : public VmControl {
 public:
  // api: the VM's life is driven by requests (see above). Create the Vmm before any other thread: it
  // blocks the signals it watches. Machines come from `machines` (by default, Machine's constructor).
  explicit Vmm(bool api, MachineFactory machines = {}, VmmTiming timing = {});
  ~Vmm() override;

  // What the process does once, when it has opened what it needs and before any guest runs: drop
  // privileges and confine the control thread (cli/main.cpp). Called on the loop's thread, after the
  // first machine is built and before its vCPUs start; with the API and no VM yet, when run() begins.
  // If it throws, the machine is not started and run() returns 1.
  void set_confinement(std::function<void()> fn) { confine_ = std::move(fn); }
  // What the command line says of every VM (its name, -v, --stats, --guest-decompress), for those
  // vm.create describes: the API has no fields for them. Set before run().
  void set_api_defaults(const MachineConfig& d) { api_defaults_ = d; }
  // By default: /proc/meminfo, and vfio's sysfs checks (the device exists, is on vfio-pci, has a group).
  void set_host_checks(HostChecks checks) { host_ = std::move(checks); }

  // The control loop. `initial` is created and booted first (the command line's VM); if that fails the
  // error is printed and run() returns 1. Returns the process's exit status.
  int run(const std::optional<MachineConfig>& initial);

  void create(const MachineConfig& config) override;
  void boot() override;
  void pause() override;
  void resume() override;
  void reboot() override;
  void shutdown() override;
  void power_button() override;
  void nmi() override;
  void remove() override;
  VmInfo info() override;
  DeviceInfo add_device(const std::string& host, const std::string& id) override;
  Removal remove_device(const std::string& id) override;
  Counters counters() override;
  void shutdown_vmm() override;

 private:
  // Runs fn on the loop's thread and returns what it returns (or throws what it throws).
  template <typename T>
  T on_loop(std::function<T()> fn);
  void do_create(const MachineConfig& config, bool from_api);
  void do_boot();
  void do_shutdown();
  std::shared_future<void> do_remove_device(const std::string& id);
  void service_machine();
  void finish_removal(int slot, const std::string& error);
  void handle_guest_exit();
  void reboot_after_reset();  // after handle_guest_exit counted the reset in quick_resets_
  bool reset_said() const;     // whether this reset and its reboot are reported
  void require(std::initializer_list<VmState> allowed, const char* action) const;

  bool api_;
  MachineFactory machines_;
  VmmTiming timing_;
  std::function<void()> confine_;  // run once, then emptied
  MachineConfig api_defaults_;
  HostChecks host_;
  void check_host_device(const std::string& bdf) const;
  void confine_once();
  ExitControl process_;  // signals, Ctrl-A x, vmm.shutdown: the process ends
  std::mutex queue_lock_;
  std::condition_variable queue_cv_;
  std::deque<std::function<void()>> queue_;
  bool loop_ended_ = false;
  bool woken_ = false;  // the guest or a signal wants the loop's attention now, not at its next tick
  void wake();
  std::atomic<bool> stats_requested_{false};

  // Loop thread only.
  VmState state_ = VmState::NotCreated;
  MachineConfig config_;
  bool config_from_api_ = false;  // vm.create's: the machine's messages name command-line options
  std::unique_ptr<RunningMachine> machine_;
  std::chrono::steady_clock::time_point paused_at_;  // the user's pause: removals' clocks stop meanwhile
  struct PendingRemoval {
    std::string id;
    std::chrono::steady_clock::time_point asked, deadline, nudge;
    std::promise<void> done;
    std::shared_future<void> answer;  // of `done`, for every request that asks for this removal
  };
  std::map<int, PendingRemoval> removals_;  // by slot
  std::chrono::steady_clock::time_point booted_at_;
  int quick_resets_ = 0;  // in a row: each came sooner than timing_.quick_run after its boot
  std::optional<std::chrono::steady_clock::time_point> reboot_at_;  // a reboot held back (Shutdown meanwhile)
  int exit_status_ = 0;
  bool guest_ended_ = false;  // without the API: the guest ended the run, and its reason is the status

  // Last: its thread (which wakes the loop through process_, queue_lock_ and queue_cv_) is joined first.
  SignalWatcher signals_{process_};
};

}  // namespace passvm
