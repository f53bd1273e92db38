#include "vmm/vmm.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <string_view>
#include <vector>

#include "base/eprint.h"
#include "confine/seccomp.h"
#include "vfio/bdf.h"
#include "vfio/host_checks.h"
#include "vmm/machine.h"

namespace passvm {
namespace {

using Kind = ControlError::Kind;

// Ids for devices given without one, and slots for devices given without one, as the machine would pick.
void fill_in_devices(MachineConfig& cfg) {
  std::vector<std::string> ids;
  for (const auto& s : cfg.slots)
    if (!s.id.empty()) ids.push_back(s.id);
  int n = 0;
  for (auto& s : cfg.slots) {
    if (s.emulation != "passthru" || !s.id.empty()) continue;
    std::string id;
    do id = fmt::format("_vfio{}", n++);
    while (std::find(ids.begin(), ids.end(), id) != ids.end());
    s.id = id;
    ids.push_back(id);
  }
  for (auto& s : cfg.slots) {
    if (s.slot != SlotConfig::kAnySlot) continue;
    for (uint32_t slot = 1; slot < 32 && s.slot == SlotConfig::kAnySlot; slot++) {
      bool used = std::any_of(cfg.slots.begin(), cfg.slots.end(), [&](const SlotConfig& o) { return o.slot == slot; });
      if (!used) s.slot = slot;
    }
    if (s.slot == SlotConfig::kAnySlot)
      throw ControlError(Kind::Conflict, "every PCI slot of the VM is taken: remove a device first");
    s.func = 0;
  }
}

void report_exit(const std::string& name, ExitReason reason, const std::string& detail) {
  switch (reason) {
    case ExitReason::PowerOff: break;
    case ExitReason::Reset: eprint("passvm: {}: {}\n", name, detail); break;
    case ExitReason::TripleFault: eprint("passvm: {}: the guest triple-faulted: {}\n", name, detail); break;
    case ExitReason::InternalError: eprint("passvm: {}: internal error: {}\n", name, detail); break;
    case ExitReason::Signal: eprint("passvm: {}: stopped by {}\n", name, detail); break;
    case ExitReason::SetupFailed: eprint("passvm: {}: {}\n", name, detail); break;
    case ExitReason::GuestPanic: eprint("passvm: {}: the guest kernel panicked: {}\n", name, detail); break;
  }
}

}  // namespace

Vmm::Vmm(bool api, MachineFactory machines, VmmTiming timing)
    : api_(api), machines_(std::move(machines)), timing_(timing) {
  if (!machines_)
    machines_ = [](const MachineConfig& c, const RunningMachine::Options& o) -> std::unique_ptr<RunningMachine> {
      return std::make_unique<Machine>(c, o);
    };
  host_.memory_bytes = host_memory_bytes;
  host_.device = [](const std::string& bdf) { vfio::check_host_device(vfio::parse_bdf(bdf)); };
  signals_.on_stats([this] {
    stats_requested_ = true;
    confine::request_test_violation();
  });
  process_.on_request([this] { wake(); });
}

void Vmm::confine_once() {
  if (!confine_) return;
  auto fn = std::move(confine_);
  confine_ = nullptr;
  fn();
}

void Vmm::wake() {
  {
    std::lock_guard g(queue_lock_);
    woken_ = true;
  }
  queue_cv_.notify_one();
}

Vmm::~Vmm() { signals_.on_stats({}); }

template <typename T>
T Vmm::on_loop(std::function<T()> fn) {
  auto task = std::make_shared<std::packaged_task<T()>>(std::move(fn));
  auto result = task->get_future();
  {
    std::lock_guard g(queue_lock_);
    if (loop_ended_) throw ControlError(Kind::WrongState, "passvm is shutting down");
    queue_.push_back([task] { (*task)(); });
  }
  queue_cv_.notify_one();
  try {
    return result.get();
  } catch (const std::future_error&) {  // the loop ended with this request still queued
    throw ControlError(Kind::WrongState, "passvm is shutting down");
  }
}

void Vmm::require(std::initializer_list<VmState> allowed, const char* action) const {
  if (std::find(allowed.begin(), allowed.end(), state_) != allowed.end()) return;
  // The fix depends on what was asked as well as on the state: a second create needs a delete, not a boot.
  const std::string_view what = action;
  std::string hint;
  if (what == "create") hint = "there is one VM at a time; delete it first (vm.delete)";
  else if (what == "pause" && state_ == VmState::Paused) hint = "it is paused already";
  else if (what == "resume" && state_ != VmState::NotCreated) hint = "only a paused VM resumes";
  else if (what == "boot" && state_ == VmState::Running) hint = "it is running already";
  else if (what == "boot" && state_ == VmState::Paused) hint = "it is running, paused: resume it (vm.resume) or shut it down (vm.shutdown)";
  else switch (state_) {
    case VmState::NotCreated: hint = "create it first (vm.create)"; break;
    case VmState::Created: hint = "boot it first (vm.boot)"; break;
    case VmState::Running: hint = "it is running"; break;
    case VmState::Paused: hint = "resume it first (vm.resume)"; break;
    case VmState::Shutdown: hint = "boot it again first (vm.boot)"; break;
  }
  throw ControlError(Kind::WrongState,
                     fmt::format("cannot {} a VM that is {}: {}", action, state_name(state_), hint));
}

namespace {

// The machine says what to change in command-line terms (-m, -c); a VM that vm.create described was given
// them as JSON fields, which the message then names too.
std::string in_api_terms(std::string message) {
  auto names = [&](std::string_view option) {
    for (size_t at = message.find(option); at != std::string::npos; at = message.find(option, at + 1)) {
      bool starts = at == 0 || message[at - 1] == ' ' || message[at - 1] == '(';
      size_t end = at + option.size();
      bool ends = end == message.size() || message[end] == ' ' || message[end] == ':' || message[end] == ')';
      if (starts && ends) return true;
    }
    return false;
  };
  std::vector<std::string> terms;
  if (names("-m")) terms.push_back("-m is memory.size");
  if (names("-c")) terms.push_back("-c is cpus.boot_vcpus");
  if (!terms.empty()) message += fmt::format(" (in vm.create's config, {})", fmt::join(terms, ", "));
  return message;
}

}  // namespace

void Vmm::do_create(const MachineConfig& config, bool from_api) {
  require({VmState::NotCreated}, "create");
  MachineConfig cfg = config;
  if (from_api) {
    cfg.name = api_defaults_.name;
    cfg.verbose = api_defaults_.verbose;
    cfg.stats = api_defaults_.stats;
    cfg.unpack_on_host = api_defaults_.unpack_on_host;
  }
  if (cfg.kernel.empty()) throw ControlError(Kind::BadRequest, "payload.kernel: the VM needs a kernel to boot");
  // A request is answered at once; the command line's VM gets the machine's own messages when it boots.
  for (const std::string* f : {&cfg.kernel, &cfg.initrd})
    if (from_api && !f->empty() && access(f->c_str(), R_OK) != 0)
      throw ControlError(Kind::BadRequest, fmt::format("cannot read {}: {}", *f, strerror(errno)));
  for (const auto& s : cfg.slots)
    if (s.emulation == "passthru") {
      try {
        vfio::parse_bdf(s.config);
      } catch (const std::exception& e) {
        throw ControlError(Kind::BadRequest, e.what());
      }
      if (from_api) check_host_device(s.config);
    }
  if (const uint64_t host = from_api && host_.memory_bytes ? host_.memory_bytes() : 0; host != 0 && cfg.memory > host)
    throw ControlError(Kind::BadRequest,
                       fmt::format("memory.size: {} MiB is more than this host's {} MiB of RAM; give less",
                                   cfg.memory >> 20, host >> 20));
  bool bridge = std::any_of(cfg.slots.begin(), cfg.slots.end(), [](const SlotConfig& s) { return s.slot == 0; });
  if (!bridge) {
    SlotConfig hostbridge;
    hostbridge.emulation = "hostbridge";
    cfg.slots.insert(cfg.slots.begin(), hostbridge);
  }
  fill_in_devices(cfg);
  config_ = cfg;
  config_from_api_ = from_api;
  state_ = VmState::Created;
}

void Vmm::check_host_device(const std::string& bdf) const {
  if (!host_.device) return;
  try {
    host_.device(bdf);
  } catch (const std::exception& e) {
    throw ControlError(Kind::BadRequest, e.what());
  }
}

void Vmm::do_boot() {
  require({VmState::Created, VmState::Shutdown}, "boot");
  RunningMachine::Options opts{.hotplug = api_,
                        .interrupted = [this] { return process_.requested(); },
                        .on_console_quit = [this] { process_.request(ExitReason::Signal, "Ctrl-A x on the console"); },
                        .on_guest_exit = [this] { wake(); },
                        .stop_on_panic = !api_};
  try {
    machine_ = machines_(config_, opts);
    if (process_.requested()) throw RunningMachine::SetupInterrupted{};  // the last chance before the guest runs
    confine_once();
    machine_->start();
    booted_at_ = std::chrono::steady_clock::now();
    reboot_at_.reset();
  } catch (const RunningMachine::SetupInterrupted&) {
    machine_.reset();
    throw ControlError(Kind::Failed, fmt::format("setup stopped by {}", process_.detail()));
  } catch (const ControlError&) {
    machine_.reset();
    throw;
  } catch (const std::exception& e) {
    machine_.reset();
    throw ControlError(Kind::Failed, config_from_api_ ? in_api_terms(e.what()) : e.what());
  }
  state_ = VmState::Running;
}

void Vmm::do_shutdown() {
  if (!machine_) return;
  config_ = machine_->config();
  machine_.reset();
  // The teardown reset and released the devices the guest was still asked for: their removal is done,
  // and they do not come back with the next boot (cloud-hypervisor drops them from the config at once).
  for (auto& [slot, r] : removals_) {
    std::erase_if(config_.slots, [&](const SlotConfig& s) { return s.id == r.id; });
    r.done.set_value();
  }
  removals_.clear();
  state_ = VmState::Shutdown;
}

std::shared_future<void> Vmm::do_remove_device(const std::string& id) {
  // Shut down, as created: the config is edited for the next boot (cloud-hypervisor's rule too).
  require({VmState::Created, VmState::Shutdown, VmState::Running, VmState::Paused}, "remove a device from");
  if (!machine_) {
    auto it = std::find_if(config_.slots.begin(), config_.slots.end(), [&](const SlotConfig& s) { return s.id == id; });
    if (it == config_.slots.end() || it->emulation != "passthru")
      throw ControlError(Kind::NotFound, fmt::format("no device with id '{}' in the VM", id));
    config_.slots.erase(it);
    std::promise<void> done;
    done.set_value();
    return done.get_future().share();
  }
  std::optional<int> found = machine_->slot_of(id);
  if (!found) throw ControlError(Kind::NotFound, fmt::format("no device with id '{}' in the VM", id));
  int slot = *found;
  if (auto pending = removals_.find(slot); pending != removals_.end()) return pending->second.answer;
  PendingRemoval& r = removals_[slot];
  r.id = id;
  r.asked = std::chrono::steady_clock::now();
  r.deadline = r.asked + timing_.eject_wait;
  r.nudge = r.asked + timing_.eject_nudge;
  r.answer = r.done.get_future().share();
  machine_->request_unplug(slot);
  return r.answer;
}

void Vmm::finish_removal(int slot, const std::string& error) {
  auto it = removals_.find(slot);
  if (it == removals_.end()) return;
  if (error.empty())
    it->second.done.set_value();
  else
    it->second.done.set_exception(std::make_exception_ptr(ControlError(Kind::Failed, error)));
  removals_.erase(it);
}

void Vmm::service_machine() {
  bool stats = stats_requested_.exchange(false);
  if (!machine_) return;
  machine_->drain();
  machine_->tick();
  for (int slot : machine_->take_ejected()) {
    std::string error;
    try {
      machine_->remove_device(slot);
    } catch (const std::exception& e) {
      error = fmt::format("the guest ejected slot {} but releasing the device failed: {}", slot, e.what());
      eprint("passvm: {}\n", error);
    }
    finish_removal(slot, error);
  }
  auto now = std::chrono::steady_clock::now();
  // A paused guest cannot eject: nothing is asked again and no time runs out until it resumes.
  for (auto it = removals_.begin(); state_ != VmState::Paused && it != removals_.end();) {
    if (now < it->second.deadline) {
      if (now >= it->second.nudge) {
        machine_->request_unplug(it->first);
        it->second.nudge = now + timing_.eject_nudge;
      }
      ++it;
      continue;
    }
    std::string why =
        fmt::format("the guest did not eject device '{}' within {} s; it stays in the VM, and goes when the guest "
                    "lets go of it (is the guest's acpiphp hotplug driver there, or is the device in use?)",
                    it->second.id, std::chrono::duration_cast<std::chrono::seconds>(timing_.eject_wait).count());
    eprint("passvm: {}: {}\n", config_.name, why);
    it->second.done.set_exception(std::make_exception_ptr(ControlError(Kind::Failed, why)));
    it = removals_.erase(it);
  }
  if (stats) fputs(machine_->stats_text().c_str(), stderr);
}

void Vmm::handle_guest_exit() {
  ExitReason reason = machine_->guest_exit().reason();
  std::string detail = machine_->guest_exit().detail();
  // A guest that reboots right after its panic (panic=-1) ends the machine before the panic's grace
  // has passed: the panic is what the user needs to hear of.
  bool guest_stopped = reason == ExitReason::Reset || reason == ExitReason::TripleFault || reason == ExitReason::PowerOff;
  if (!api_ && guest_stopped && machine_->guest_panicked()) {
    detail = fmt::format("{}; then {}", Machine::panic_detail(), detail.empty() ? "it powered off" : detail);
    reason = ExitReason::GuestPanic;
  }
  machine_->stop();  // the guest's last output first, and final counters
  if (config_.stats) fputs(machine_->final_stats_text().c_str(), stderr);
  // With the API a triple fault reboots the VM as a reset does (Linux's last way to reboot; what
  // cloud-hypervisor and QEMU do); on the command line it ends passvm with its own status.
  const bool reboots = api_ && (reason == ExitReason::Reset || reason == ExitReason::TripleFault);
  bool said = true;
  if (reboots) {
    quick_resets_ = std::chrono::steady_clock::now() - booted_at_ < timing_.quick_run ? quick_resets_ + 1 : 0;
    said = reset_said();
  }
  if (said) {
    report_exit(config_.name, reason, detail);
    if (reason == ExitReason::Reset || reason == ExitReason::TripleFault || reason == ExitReason::GuestPanic)
      if (std::string hint = machine_->silent_stop_hint(); !hint.empty())
        eprint("passvm: {}: the guest printed nothing before it stopped: {}\n", config_.name, hint);
  }
  if (!api_) {
    exit_status_ = exit_status(reason);
    guest_ended_ = true;  // the first reason wins: a signal during the teardown changes nothing
    machine_.reset();
    state_ = VmState::Shutdown;
    return;
  }
  do_shutdown();
  if (reboots) reboot_after_reset();
}

bool Vmm::reset_said() const {
  // Said while the wait grows, then at every power of two: a guest looping for days says little.
  return quick_resets_ - timing_.quick_reboots <= 8 || std::has_single_bit(static_cast<unsigned>(quick_resets_));
}

void Vmm::reboot_after_reset() {
  using namespace std::chrono;
  const auto now = steady_clock::now();
  const int held = quick_resets_ - timing_.quick_reboots;  // how many reboots in a row were held back
  if (held <= 0) {
    eprint("passvm: {}: rebooting\n", config_.name);
    try {
      do_boot();
    } catch (const std::exception& e) {
      eprint("passvm: {}: the reboot failed: {}\n", config_.name, e.what());
    }
    return;
  }
  milliseconds wait = timing_.max_delay;
  if (held <= 30) wait = std::min(timing_.first_delay * (int64_t{1} << (held - 1)), timing_.max_delay);
  reboot_at_ = now + wait;
  if (reset_said())
    eprint("passvm: {}: the guest reset {} times in a row, each within {} s of its boot; rebooting in {:.3g} s "
           "(vm.boot boots it now, vm.shutdown keeps it down)\n",
           config_.name, quick_resets_, duration_cast<seconds>(timing_.quick_run).count(),
           duration<double>(wait).count());
}

int Vmm::run(const std::optional<MachineConfig>& initial) {
  // However run() ends, requests still queued or arriving later must not wait forever: they fail.
  struct EndOfLoop {
    Vmm& v;
    ~EndOfLoop() {
      std::deque<std::function<void()>> left;
      {
        std::lock_guard g(v.queue_lock_);
        v.loop_ended_ = true;
        left.swap(v.queue_);
      }
    }  // `left` goes: each waiting request gets a broken promise, which on_loop reports
  } end_of_loop{*this};
  try {
    if (!initial) confine_once();
  } catch (const std::exception& e) {
    eprint("passvm: {}\n", e.what());
    return 1;
  }
  if (initial) {
    try {
      do_create(*initial, false);
      do_boot();
    } catch (const ControlError& e) {
      if (process_.requested()) {
        eprint("passvm: {}: stopped by {} during setup\n", initial->name, process_.detail());
        return exit_status(ExitReason::Signal);
      }
      eprint("passvm: {}\n", e.what());
      return 1;
    }
  }
  for (;;) {
    std::deque<std::function<void()>> tasks;
    {
      std::unique_lock g(queue_lock_);
      // Coalesced writes reach their device at the next exit of any vCPU; a guest that writes and then
      // only halts (a panic message's last line) would keep them queued, so drain now and then too.
      queue_cv_.wait_for(g, std::chrono::milliseconds(50), [&] { return !queue_.empty() || woken_; });
      woken_ = false;
      tasks.swap(queue_);
    }
    for (auto& t : tasks) t();
    service_machine();
    if (reboot_at_ && std::chrono::steady_clock::now() >= *reboot_at_) {
      reboot_at_.reset();
      try {
        do_boot();
      } catch (const std::exception& e) {
        eprint("passvm: {}: the reboot failed: {}\n", config_.name, e.what());
      }
    }
    if (machine_ && machine_->guest_exit().requested()) {
      handle_guest_exit();
      if (!api_) break;
    }
    if (process_.requested()) break;
  }
  if (process_.requested() && !guest_ended_) {
    ExitReason reason = process_.reason();
    if (machine_) machine_->stop();
    if (machine_ && config_.stats) fputs(machine_->final_stats_text().c_str(), stderr);
    report_exit(config_.name, reason, process_.detail());
    exit_status_ = exit_status(reason);
  }
  do_shutdown();
  return exit_status_;
}

void Vmm::create(const MachineConfig& config) {
  on_loop<void>([&] { do_create(config, true); });
}
void Vmm::boot() {
  on_loop<void>([&] {
    do_boot();
    quick_resets_ = 0;  // the user's boot: the guest gets its quick reboots again
  });
}
void Vmm::pause() {
  on_loop<void>([&] {
    require({VmState::Running}, "pause");
    machine_->pause();
    state_ = VmState::Paused;
    paused_at_ = std::chrono::steady_clock::now();
  });
}
void Vmm::resume() {
  on_loop<void>([&] {
    require({VmState::Paused}, "resume");
    machine_->resume();
    state_ = VmState::Running;
    // The guest gets the whole of its time to eject while it runs: each removal's clock stopped at the
    // pause, or was asked during it.
    const auto now = std::chrono::steady_clock::now();
    for (auto& [slot, r] : removals_) {
      r.deadline += now - std::max(paused_at_, r.asked);
      r.nudge = now;  // asked again at once: the request may have met a paused guest
    }
  });
}
void Vmm::reboot() {
  on_loop<void>([&] {
    require({VmState::Running, VmState::Paused}, "reboot");
    do_shutdown();
    do_boot();
    quick_resets_ = 0;
  });
}
void Vmm::shutdown() {
  on_loop<void>([&] {
    if (state_ == VmState::Shutdown && reboot_at_) {  // a reboot held back: it does not happen
      reboot_at_.reset();
      eprint("passvm: {}: the held-back reboot is cancelled; the VM stays shut down\n", config_.name);
      return;
    }
    require({VmState::Running, VmState::Paused}, "shut down");
    do_shutdown();
  });
}
void Vmm::power_button() {
  on_loop<void>([&] {
    require({VmState::Running, VmState::Paused}, "press the power button of");
    if (machine_->press_power_button())
      eprint("passvm: {}: power button pressed: the guest may shut down now\n", config_.name);
    else
      eprint(
                 "passvm: {}: power button pressed, but the guest has not enabled its power button event (Linux "
                 "without its `button` driver): it sees the press only once it does; vm.shutdown stops the VM at "
                 "once\n",
                 config_.name);
  });
}
void Vmm::nmi() {
  on_loop<void>([&] {
    require({VmState::Running, VmState::Paused}, "send an NMI to");
    uint32_t cpus = machine_->config().cpus;
    uint32_t took = machine_->send_nmi();
    if (took == cpus)
      eprint("passvm: {}: NMI sent to {} vCPU{}\n", config_.name, cpus, cpus == 1 ? "" : "s");
    else
      eprint("passvm: {}: NMI sent; {} of {} vCPUs took it (the others have their local APIC disabled)\n",
             config_.name, took, cpus);
  });
}
void Vmm::remove() {
  on_loop<void>([&] {
    do_shutdown();
    reboot_at_.reset();
    config_ = {};
    state_ = VmState::NotCreated;
  });
}
VmInfo Vmm::info() {
  return on_loop<VmInfo>([&] {
    VmInfo out;
    out.state = state_;
    out.config = machine_ ? machine_->config() : config_;
    if (machine_) {
      out.devices = machine_->devices();
    } else {
      for (const auto& s : out.config.slots)
        if (s.emulation == "passthru") out.devices.push_back({s.id, guest_bdf(s.slot, s.func), s.config});
    }
    return out;
  });
}
DeviceInfo Vmm::add_device(const std::string& host, const std::string& id) {
  return on_loop<DeviceInfo>([&] {
    require({VmState::Created, VmState::Shutdown, VmState::Running, VmState::Paused}, "add a device to");
    const MachineConfig& now = machine_ ? machine_->config() : config_;
    vfio::Bdf bdf;
    try {
      bdf = vfio::parse_bdf(host);
    } catch (const std::exception& e) {
      throw ControlError(Kind::BadRequest, e.what());
    }
    for (const auto& s : now.slots) {
      if (!id.empty() && s.id == id) throw ControlError(Kind::Conflict, fmt::format("the id '{}' is taken", id));
      if (s.emulation == "passthru" && vfio::parse_bdf(s.config) == bdf)
        throw ControlError(Kind::Conflict, fmt::format("{} is already in this VM (id '{}', guest {})", bdf.str(),
                                                       s.id, guest_bdf(s.slot, s.func)));
    }
    check_host_device(bdf.str());
    MachineConfig probe = now;
    SlotConfig added;
    added.slot = SlotConfig::kAnySlot;
    added.emulation = "passthru";
    added.config = bdf.str();
    added.id = id;
    added.p2p = now.p2p;  // the API's platform.vfio_p2p_dma, or the command line's default
    probe.slots.push_back(added);
    fill_in_devices(probe);
    SlotConfig s = probe.slots.back();
    if (!machine_) {
      config_.slots.push_back(s);
      return DeviceInfo{s.id, guest_bdf(s.slot, s.func), s.config};
    }
    s.slot = SlotConfig::kAnySlot;  // the machine picks among its hotplug slots
    return machine_->add_device(s);
  });
}
Removal Vmm::remove_device(const std::string& id) {
  // From the request's arrival: the loop may first finish releasing another device the guest ejected.
  auto deadline = std::chrono::steady_clock::now() + timing_.remove_answer;
  bool paused = false;
  auto done = on_loop<std::shared_future<void>>([&] {
    auto answer = do_remove_device(id);
    paused = state_ == VmState::Paused;
    return answer;
  });
  // A paused guest ejects nothing until it resumes: waiting would only delay the answer.
  if (paused && done.wait_for(std::chrono::seconds(0)) != std::future_status::ready) return Removal::Pending;
  if (done.wait_until(deadline) != std::future_status::ready) return Removal::Pending;
  done.get();  // throws when releasing the ejected device failed
  return Removal::Done;
}
Counters Vmm::counters() {
  return on_loop<Counters>([&] {
    require({VmState::Running, VmState::Paused}, "read the counters of");
    return machine_->counters();
  });
}
void Vmm::shutdown_vmm() { process_.request(ExitReason::PowerOff, "vmm.shutdown"); }

}  // namespace passvm
