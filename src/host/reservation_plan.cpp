#include "host/reservation_plan.h"

#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "host/host_error.h"
#include "host/host_usage.h"

extern char** environ;

namespace passvm::host {

namespace {

const std::string kDriversDir = "/sys/bus/pci/drivers/";

bool contains(const std::vector<PciAddress>& list, const PciAddress& a) {
  return std::find(list.begin(), list.end(), a) != list.end();
}

void write_step(Plan& plan, std::string path, std::string value) {
  plan.steps.push_back({Step::Kind::Write, std::move(path), std::move(value)});
}


std::string vfio_node(unsigned group) { return fmt::format("/dev/vfio/{}", group); }

// VFIO creates group nodes root-only; that is what a node goes back to.
constexpr uint32_t kNodeMode = 0600;

Step set_owner_step(unsigned group, const std::string& user, FileOwner owner) {
  Step step{Step::Kind::SetOwner, vfio_node(group), ""};
  step.user = user;
  step.owner = owner;
  return step;
}

std::string owner_name(const std::optional<Reservation>& record) {
  return record && !record->user.empty() ? record->user : "";
}

std::string unknown_device(const PciAddress& address) {
  return fmt::format("unknown device {}: no /sys/bus/pci/devices/{}; run `passvm list` to see the host's PCI devices",
                     address.str(), address.str());
}

}  // namespace

std::string Step::describe() const {
  switch (kind) {
    case Kind::Write:
      return fmt::format("echo '{}' > {}", value == "\n" ? "" : value, path);
    case Kind::LoadModule:
      return fmt::format("modprobe {}", value);
    case Kind::SaveState:
      return fmt::format("remember previous driver '{}'{}{} in {}", value.empty() ? "(none)" : value,
                         previous_override.empty() ? "" : ", driver_override '" + previous_override + "'",
                         user.empty() ? "" : " and owner " + user, path);
    case Kind::DropState:
      return fmt::format("rm -f {}", path);
    case Kind::SetOwner:
      return fmt::format("chown {} {} && chmod {:04o} {}", user.empty() ? "root:root" : user + ":", path,
                         owner.mode, path);
  }
  return "?";
}

std::string state_path(const PciAddress& address) { return std::string(kStateDir) + "/" + address.str(); }

std::optional<Reservation> read_reservation(const Sysroot& sysroot, const PciAddress& address) {
  auto text = sysroot.read(state_path(address));
  if (!text) return std::nullopt;
  Reservation record;
  std::istringstream lines(*text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.starts_with("driver=")) record.driver = line.substr(7);
    if (line.starts_with("user=")) record.user = line.substr(5);
    if (line.starts_with("override=")) record.override_driver = line.substr(9);
  }
  return record;
}

std::optional<std::string> remembered_driver(const Sysroot& sysroot, const PciAddress& address) {
  auto record = read_reservation(sysroot, address);
  if (!record) return std::nullopt;
  return record->driver;
}

Plan plan_reserve(const Sysroot& sysroot, const std::vector<HostDevice>& devices,
                  const std::vector<PciAddress>& addresses, const ReserveOptions& options) {
  Plan plan;
  bool vfio_available = sysroot.exists(kDriversDir + std::string(kVfioDriver));
  const std::string user = options.user ? options.user->name : "";
  std::vector<unsigned> owned_groups;  // groups whose node goes to options.user, in order
  std::vector<std::pair<unsigned, HostUser>> carried_owners;  // without --user: groups given back to their owner
  std::vector<PciAddress> queue = addresses;
  std::vector<PciAddress> kept_members;  // group members no reservation takes, each said once
  const HostRoutes routes = host_routes(sysroot);
  for (size_t i = 0; i < queue.size(); ++i) {
    const PciAddress address = queue[i];
    if (contains(plan.targets, address)) continue;
    auto dev = find_device(devices, address);
    if (!dev) {
      plan.errors.push_back(unknown_device(address));
      continue;
    }
    if (dev->is_bridge()) {
      plan.errors.push_back(fmt::format("{} is a {}: bridges cannot be passed through; reserve the devices "
                                        "behind it instead",
                                        address.str(), class_name(dev->class_code)));
      continue;
    }
    auto vfs = sysroot.read_line(dev->sysfs_dir() + "/sriov_numvfs");
    if (vfs && !vfs->empty() && *vfs != "0" && !dev->on_vfio()) {
      plan.errors.push_back(fmt::format(
          "{} has {} SR-IOV virtual functions enabled: unbinding its driver removes them (and any host interface "
          "or VM on them), and vfio-pci refuses such a device; disable them first (echo 0 > "
          "/sys/bus/pci/devices/{}/sriov_numvfs) or reserve a virtual function instead",
          address.str(), *vfs, address.str()));
      continue;
    }
    for (const auto& caution : host_may_use(sysroot, *dev, routes))
      plan.warnings.push_back(fmt::format("{} may be needed by the host: {}", address.str(), caution));
    auto uses = host_uses(sysroot, *dev, routes, true);
    for (const auto& use : uses) {
      std::string text = fmt::format("{} is needed by the host: {}", address.str(), use);
      if (options.force) {
        plan.warnings.push_back(text + " (taking it anyway: --force)");
      } else {
        plan.errors.push_back(text + "; stop the host using it first (unmount it, move the console or the network, stop the process), or pass --force to take it anyway");
      }
    }
    if (!dev->iommu_group) {
      std::string text = fmt::format("{} has no IOMMU group: the IOMMU is off or missing, so vfio-pci cannot "
                                     "use it; enable VT-d/AMD-Vi and boot with intel_iommu=on (see `passvm check`)",
                                     address.str());
      if (options.force) {
        plan.warnings.push_back(text);
      } else {
        plan.errors.push_back(text);
      }
    }
    if (options.user && dev->iommu_group) {
      for (const auto& member : group_status(devices, *dev).members) {
        std::string other = owner_name(read_reservation(sysroot, member.address));
        if (member.reserved() && !other.empty() && other != user && !contains(queue, member.address)) {
          plan.errors.push_back(fmt::format("IOMMU group {} of {} is already given to {} through {}; release that "
                                            "device first, or reserve it for {} too",
                                            *dev->iommu_group, address.str(), other, member.address.str(), user));
        }
      }
      if (std::find(owned_groups.begin(), owned_groups.end(), *dev->iommu_group) == owned_groups.end()) {
        owned_groups.push_back(*dev->iommu_group);
      }
    } else if (options.user) {
      plan.warnings.push_back(fmt::format("{} has no IOMMU group, so no /dev/vfio node to give to {}", address.str(),
                                          user));
    }
    plan.targets.push_back(address);

    // Reserving without --user keeps the owner a device already has. Not on vfio-pci, its group's node
    // is made anew, root's: it is given to that owner again (who may no longer exist: then it is root's).
    auto previous = read_reservation(sysroot, address);
    std::string record_user = options.user ? user : owner_name(previous);
    if (!options.user && !record_user.empty() && !dev->on_vfio()) {
      std::optional<HostUser> kept;
      try {
        kept = lookup_user(sysroot, record_user);
      } catch (const HostError&) {
      }
      if (kept && dev->iommu_group) {
        if (std::none_of(carried_owners.begin(), carried_owners.end(),
                         [&](const auto& c) { return c.first == *dev->iommu_group; }))
          carried_owners.push_back({*dev->iommu_group, *kept});
      } else {
        plan.warnings.push_back(fmt::format("{} was given to {}, {}: it will be root's; give it with --user",
                                            address.str(), record_user,
                                            kept ? "but it has no IOMMU group" : "who is no longer a user here"));
        record_user.clear();
      }
    }
    // An override another tool set (pci-stub, a vendor driver) is what release must put back. While the
    // device is reserved its override is ours, and the record holds the one it had before.
    std::string keep_override = dev->reserved() ? (previous ? previous->override_driver : "") : dev->driver_override;
    auto save_state = [&](const std::string& driver) {
      Step step{Step::Kind::SaveState, state_path(address), driver};
      step.user = record_user;
      step.previous_override = keep_override;
      plan.steps.push_back(step);
    };
    bool new_owner = record_user != owner_name(previous);
    const std::string dir = dev->sysfs_dir();
    if (dev->on_vfio()) {
      plan.notes.push_back(fmt::format("{} is already bound to vfio-pci", address.str()));
      if (new_owner) save_state(previous ? previous->driver : "");
      if (dev->driver_override != kVfioDriver) write_step(plan, dir + "/driver_override", std::string(kVfioDriver));
    } else {
      if (!vfio_available) {
        plan.steps.push_back({Step::Kind::LoadModule, "", std::string(kVfioDriver)});
        vfio_available = true;
      }
      // A device already marked (boot claim) but still driverless keeps the driver it had before, if any.
      if (!dev->driver.empty() || !previous) {
        save_state(dev->driver);
      } else if (new_owner) {
        save_state(previous->driver);
      }
      write_step(plan, dir + "/driver_override", std::string(kVfioDriver));
      if (!dev->driver.empty()) write_step(plan, dir + "/driver/unbind", address.str());
      write_step(plan, "/sys/bus/pci/drivers_probe", address.str());
    }

    for (const auto& blocker : group_status(devices, *dev).blockers) {
      if (contains(queue, blocker.address)) continue;
      // Said once; an error when the whole group was asked for, since it cannot be had.
      const KeptMember kept = kept_by_host(sysroot, blocker, *dev);
      if (kept != KeptMember::none) {
        if (contains(kept_members, blocker.address)) continue;
        kept_members.push_back(blocker.address);
        const bool own_pf = kept == KeptMember::own_physical_function;
        std::string text = fmt::format(
            "{} shares IOMMU group {} with {} ({}, driver {}), which the host keeps: VFIO will refuse the group. "
            "The platform does not isolate {} (no ACS); {}",
            address.str(), *dev->iommu_group, blocker.address.str(), class_name(blocker.class_code),
            blocker.driver, own_pf ? "virtual functions from their physical function" : "this device from its chipset",
            own_pf ? "its virtual functions cannot be passed through on this host" : "put the device in another slot");
        (options.with_group ? plan.errors : plan.warnings).push_back(std::move(text));
        continue;
      }
      if (options.with_group) {
        plan.notes.push_back(fmt::format("also reserving {} ({}), which shares IOMMU group {}", blocker.address.str(),
                                         blocker.driver, *dev->iommu_group));
        queue.push_back(blocker.address);
      } else {
        plan.warnings.push_back(fmt::format(
            "{} shares IOMMU group {} with {} ({}, driver {}), which stays on the host: VFIO will refuse the "
            "group; reserve both with `passvm reserve --with-group {}`",
            address.str(), *dev->iommu_group, blocker.address.str(), class_name(blocker.class_code),
            blocker.driver, address.str()));
      }
    }
  }
  // Last: the node exists only once a member of the group is bound to vfio-pci.
  for (unsigned group : owned_groups) {
    plan.steps.push_back(set_owner_step(group, user, {options.user->uid, options.user->gid, kNodeMode}));
  }
  for (const auto& [group, owner] : carried_owners)
    plan.steps.push_back(set_owner_step(group, owner.name, {owner.uid, owner.gid, kNodeMode}));
  return plan;
}

// Processes that have the device's VFIO group (or its VFIO device node) open, as "1234 (passvm)": the
// kernel's unbind waits for them, and no signal ends that wait.
std::vector<std::string> vfio_holders(const Sysroot& sysroot, const HostDevice& dev) {
  std::set<std::string> nodes;
  if (dev.iommu_group) nodes.insert(vfio_node(*dev.iommu_group));
  for (const auto& cdev : sysroot.list(dev.sysfs_dir() + "/vfio-dev")) nodes.insert("/dev/vfio/devices/" + cdev);
  return processes_with_open(sysroot, nodes);
}

Plan plan_release(const Sysroot& sysroot, const std::vector<HostDevice>& devices,
                  const std::vector<PciAddress>& addresses) {
  Plan plan;
  std::vector<unsigned> returned_groups;
  // The node goes back to root unless a device staying reserved still holds it for the same user.
  auto give_back = [&](const HostDevice& dev, const std::string& user) {
    if (user.empty() || !dev.iommu_group || !sysroot.exists(vfio_node(*dev.iommu_group))) return;
    unsigned group = *dev.iommu_group;
    if (std::find(returned_groups.begin(), returned_groups.end(), group) != returned_groups.end()) return;
    for (const auto& member : group_status(devices, dev).members) {
      if (member.reserved() && !contains(addresses, member.address) &&
          owner_name(read_reservation(sysroot, member.address)) == user) {
        plan.notes.push_back(fmt::format("{} stays with {}: {} is still reserved for them", vfio_node(group), user,
                                         member.address.str()));
        return;
      }
    }
    returned_groups.push_back(group);
    Step step = set_owner_step(group, "", {0, 0, kNodeMode});
    step.required = false;  // the node goes away with the group's last vfio-pci device anyway
    plan.steps.push_back(step);
  };
  for (const auto& address : addresses) {
    if (contains(plan.targets, address)) continue;
    auto dev = find_device(devices, address);
    if (!dev) {
      plan.errors.push_back(unknown_device(address));
      continue;
    }
    auto record = read_reservation(sysroot, address);
    auto previous = record ? std::optional<std::string>(record->driver) : std::nullopt;
    const std::string dir = dev->sysfs_dir();
    const std::string saved_override = record ? record->override_driver : "";
    // The kernel binds only the driver an override names: an override naming another driver than the
    // remembered one (set while the device was on it) goes back after the bind, not before.
    const bool override_after = !saved_override.empty() && previous && !previous->empty() && *previous != saved_override;
    // The override the device had before; one naming another driver waits for the bind when one follows.
    auto override_step = [&](bool bind_follows) {
      write_step(plan, dir + "/driver_override",
                 saved_override.empty() || (bind_follows && override_after) ? std::string("\n") : saved_override);
    };
    // required=false: a driver that refuses the device is a warning, and the record goes all the same, so
    // that a release never fails again and again on it, nor keeps the devices after it reserved.
    auto bind_back = [&](bool required) {
      if (previous && !previous->empty() && sysroot.exists(kDriversDir + *previous)) {
        write_step(plan, kDriversDir + *previous + "/bind", address.str());
      } else {
        // The driver may never have been loaded (claimed at boot): load whatever matches the device.
        if (auto modalias = sysroot.read_line(dir + "/modalias"); modalias && !modalias->empty()) {
          plan.steps.push_back({Step::Kind::LoadModule, "", *modalias, false});
        }
        write_step(plan, "/sys/bus/pci/drivers_probe", address.str());
      }
      plan.steps.back().required = required;
      if (override_after) write_step(plan, dir + "/driver_override", saved_override);
      if (previous) plan.steps.push_back({Step::Kind::DropState, state_path(address), ""});
    };
    if (!dev->reserved()) {
      if (dev->driver.empty() && previous && !previous->empty()) {
        // An earlier release cleared the override but its bind failed: the record is all that still
        // knows where the device belongs, so try once more rather than forget it.
        plan.notes.push_back(fmt::format("{} is released but has no driver; trying once more to bind it back to {}",
                                         address.str(), *previous));
        plan.targets.push_back(address);
        override_step(true);
        bind_back(false);
        continue;
      }
      plan.notes.push_back(fmt::format("{} is not reserved (driver: {}); nothing to do", address.str(),
                                       dev->driver.empty() ? "none" : dev->driver));
      if (previous) plan.steps.push_back({Step::Kind::DropState, state_path(address), ""});
      continue;
    }
    if (dev->on_vfio()) {
      if (auto holders = vfio_holders(sysroot, *dev); !holders.empty()) {
        plan.errors.push_back(fmt::format("{} is in use by process {}, which has its VFIO group open (a VM): shut "
                                          "that VM down or remove the device from it first; releasing it now would "
                                          "hang until that process exits",
                                          address.str(), fmt::join(holders, ", ")));
        continue;
      }
      // vfio-pci disables a physical function's SR-IOV as it lets go of it: its virtual functions go, and
      // the unbind waits for whoever holds one of them.
      std::vector<std::string> vf_users;
      for (const auto& vf : devices)
        if (is_physical_function_of(sysroot, *dev, vf))
          for (const auto& h : vfio_holders(sysroot, vf)) vf_users.push_back(fmt::format("{} ({})", h, vf.address.str()));
      if (!vf_users.empty()) {
        plan.errors.push_back(fmt::format("{} has virtual functions in use by process {}, which has their VFIO group "
                                          "open (a VM): releasing the physical function takes its virtual functions "
                                          "away and would hang until that process exits; shut that VM down or remove "
                                          "the virtual function from it first",
                                          address.str(), fmt::join(vf_users, ", ")));
        continue;
      }
    }
    plan.targets.push_back(address);
    give_back(*dev, owner_name(record));
    if (!dev->on_vfio() && !dev->driver.empty()) {
      // Marked for vfio-pci but still on another driver (a reserve that stopped before the unbind): the
      // override it had before is all there is to put back.
      override_step(false);
      plan.notes.push_back(fmt::format("{} stays on {}", address.str(), dev->driver));
      if (previous) plan.steps.push_back({Step::Kind::DropState, state_path(address), ""});
      continue;
    }
    override_step(true);
    if (dev->on_vfio()) write_step(plan, dir + "/driver/unbind", address.str());
    bind_back(true);
  }
  return plan;
}

int run_command(const std::vector<std::string>& argv) {
  // udev runs programs with an almost empty environment: without PATH, modprobe would not be found.
  if (!std::getenv("PATH")) setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 0);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  if (posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), environ) != 0) return 127;
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return 127;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

namespace {

// The kernel binds synchronously, but udev may create /dev/vfio/N a moment later; on a fake
// tree nothing changes by waiting. Returns the last answer of done().
bool wait_for(const Sysroot& sysroot, const std::function<bool()>& done) {
  bool ok = done();
  for (int i = 0; i < 20 && !ok && sysroot.is_real_root(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ok = done();
  }
  return ok;
}

}  // namespace

void execute(const Sysroot& sysroot, const Plan& plan, const CommandRunner& runner,
             std::vector<std::string>& warnings) {
  if (!plan.errors.empty()) throw HostError("refusing to execute a plan with errors: " + plan.errors.front());
  for (const auto& step : plan.steps) {
    try {
      switch (step.kind) {
        case Step::Kind::Write:
          sysroot.write(step.path, step.value);
          break;
        case Step::Kind::LoadModule: {
          int status = runner({"modprobe", step.value});
          bool vfio = step.value == kVfioDriver;
          if (vfio && (status != 0 || !sysroot.exists(kDriversDir + std::string(kVfioDriver)))) {
            throw HostError(fmt::format("vfio-pci is missing: `modprobe vfio-pci` {}; install the kernel's vfio "
                                        "modules (or build with CONFIG_VFIO_PCI) and retry",
                                        status != 0 ? fmt::format("failed (status {})", status)
                                                    : "did not create /sys/bus/pci/drivers/vfio-pci"));
          }
          if (status != 0) throw HostError(fmt::format("`{}` failed (status {})", step.describe(), status));
          break;
        }
        case Step::Kind::SaveState:
          sysroot.write_file(step.path, fmt::format("driver={}\n{}{}", step.value,
                                                    step.user.empty() ? "" : "user=" + step.user + "\n",
                                                    step.previous_override.empty()
                                                        ? ""
                                                        : "override=" + step.previous_override + "\n"));
          break;
        case Step::Kind::SetOwner:
          if (!wait_for(sysroot, [&] { return sysroot.exists(step.path); })) {
            throw HostError(fmt::format("{} did not appear after binding, so it cannot be given to {}; is devtmpfs "
                                        "mounted? See `passvm check`",
                                        step.path, step.user.empty() ? "root" : step.user));
          }
          sysroot.set_owner(step.path, step.owner);
          break;
        case Step::Kind::DropState:
          sysroot.remove(step.path);
          break;
      }
    } catch (const HostError& e) {
      if (step.required) throw;
      warnings.push_back(e.what());
    }
  }
}

namespace {

template <typename Check>
std::vector<std::string> settle(const Sysroot& sysroot, Check check) {
  std::vector<std::string> problems;
  wait_for(sysroot, [&] {
    problems = check();
    return problems.empty();
  });
  return problems;
}

}  // namespace

std::vector<std::string> verify_reserved(const Sysroot& sysroot, const std::vector<PciAddress>& addresses) {
  return settle(sysroot, [&] {
    std::vector<std::string> problems;
    auto devices = scan_devices(sysroot);
    for (const auto& address : addresses) {
      auto dev = find_device(devices, address);
      if (!dev) {
        problems.push_back(fmt::format("{} disappeared during reserve; run `passvm list`", address.str()));
      } else if (!dev->on_vfio()) {
        problems.push_back(fmt::format("{} is not bound to vfio-pci after probing (driver: {}); see `dmesg | "
                                       "grep vfio` and `passvm check`",
                                       address.str(), dev->driver.empty() ? "none" : dev->driver));
      } else if (!dev->iommu_group) {
        problems.push_back(fmt::format("{} has no IOMMU group; see `passvm check`", address.str()));
      } else if (!sysroot.exists(fmt::format("/dev/vfio/{}", *dev->iommu_group))) {
        problems.push_back(fmt::format("{} is on vfio-pci but /dev/vfio/{} is missing; is devtmpfs or udev "
                                       "running?",
                                       address.str(), *dev->iommu_group));
      }
    }
    return problems;
  });
}

std::vector<std::string> verify_released(const Sysroot& sysroot, const std::vector<PciAddress>& addresses) {
  return settle(sysroot, [&] {
    std::vector<std::string> problems;
    auto devices = scan_devices(sysroot);
    for (const auto& address : addresses) {
      auto dev = find_device(devices, address);
      if (dev && dev->reserved()) {
        problems.push_back(fmt::format("{} is still reserved (driver {}, driver_override {})", address.str(),
                                       dev->driver.empty() ? "none" : dev->driver,
                                       dev->driver_override.empty() ? "unset" : dev->driver_override));
      }
    }
    return problems;
  });
}

}  // namespace passvm::host
