#include "host/reservation_plan.h"

#include <spawn.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <thread>

#include <fmt/format.h>

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
      return fmt::format("remember previous driver '{}' in {}", value.empty() ? "(none)" : value, path);
    case Kind::DropState:
      return fmt::format("rm -f {}", path);
  }
  return "?";
}

std::string state_path(const PciAddress& address) { return std::string(kStateDir) + "/" + address.str(); }

std::optional<std::string> remembered_driver(const Sysroot& sysroot, const PciAddress& address) {
  auto text = sysroot.read(state_path(address));
  if (!text) return std::nullopt;
  std::string_view s = *text;
  auto pos = s.find("driver=");
  if (pos == std::string_view::npos) return std::string();
  s = s.substr(pos + 7);
  return std::string(s.substr(0, s.find('\n')));
}

Plan plan_reserve(const Sysroot& sysroot, const std::vector<HostDevice>& devices,
                  const std::vector<PciAddress>& addresses, const ReserveOptions& options) {
  Plan plan;
  bool vfio_available = sysroot.exists(kDriversDir + std::string(kVfioDriver));
  std::vector<PciAddress> queue = addresses;
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
    auto uses = host_uses(sysroot, *dev);
    for (const auto& use : uses) {
      std::string text = fmt::format("{} is needed by the host: {}", address.str(), use);
      if (options.force) {
        plan.warnings.push_back(text + " (taking it anyway: --force)");
      } else {
        plan.errors.push_back(text + "; unmount it / move the console first, or pass --force to take it anyway");
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
    plan.targets.push_back(address);

    const std::string dir = dev->sysfs_dir();
    if (dev->on_vfio()) {
      plan.notes.push_back(fmt::format("{} is already bound to vfio-pci", address.str()));
      if (dev->driver_override != kVfioDriver) write_step(plan, dir + "/driver_override", std::string(kVfioDriver));
    } else {
      if (!vfio_available) {
        plan.steps.push_back({Step::Kind::LoadModule, "", std::string(kVfioDriver)});
        vfio_available = true;
      }
      // A device already marked (boot claim) but still driverless keeps the driver it had before, if any.
      auto previous = remembered_driver(sysroot, address);
      if (!dev->driver.empty() || !previous) {
        plan.steps.push_back({Step::Kind::SaveState, state_path(address), dev->driver});
      }
      write_step(plan, dir + "/driver_override", std::string(kVfioDriver));
      if (!dev->driver.empty()) write_step(plan, dir + "/driver/unbind", address.str());
      write_step(plan, "/sys/bus/pci/drivers_probe", address.str());
    }

    for (const auto& blocker : group_status(devices, *dev).blockers) {
      if (contains(queue, blocker.address)) continue;
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
  return plan;
}

Plan plan_release(const Sysroot& sysroot, const std::vector<HostDevice>& devices,
                  const std::vector<PciAddress>& addresses) {
  Plan plan;
  for (const auto& address : addresses) {
    if (contains(plan.targets, address)) continue;
    auto dev = find_device(devices, address);
    if (!dev) {
      plan.errors.push_back(unknown_device(address));
      continue;
    }
    auto previous = remembered_driver(sysroot, address);
    if (!dev->reserved()) {
      plan.notes.push_back(fmt::format("{} is not reserved (driver: {}); nothing to do", address.str(),
                                       dev->driver.empty() ? "none" : dev->driver));
      if (previous) plan.steps.push_back({Step::Kind::DropState, state_path(address), ""});
      continue;
    }
    plan.targets.push_back(address);
    const std::string dir = dev->sysfs_dir();
    write_step(plan, dir + "/driver_override", "\n");
    if (dev->on_vfio()) {
      write_step(plan, dir + "/driver/unbind", address.str());
    } else if (!dev->driver.empty()) {
      // Marked for vfio-pci but still on another driver: clearing the mark is all there is to do.
      plan.notes.push_back(fmt::format("{} stays on {}", address.str(), dev->driver));
      if (previous) plan.steps.push_back({Step::Kind::DropState, state_path(address), ""});
      continue;
    }
    if (previous && !previous->empty() && sysroot.exists(kDriversDir + *previous)) {
      write_step(plan, kDriversDir + *previous + "/bind", address.str());
    } else {
      // The driver may never have been loaded (claimed at boot): load whatever matches the device.
      if (auto modalias = sysroot.read_line(dir + "/modalias"); modalias && !modalias->empty()) {
        plan.steps.push_back({Step::Kind::LoadModule, "", *modalias, false});
      }
      write_step(plan, "/sys/bus/pci/drivers_probe", address.str());
    }
    if (previous) plan.steps.push_back({Step::Kind::DropState, state_path(address), ""});
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
          sysroot.write_file(step.path, fmt::format("driver={}\n", step.value));
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

// The kernel binds synchronously, but udev may create /dev/vfio/N a moment later.
template <typename Check>
std::vector<std::string> settle(const Sysroot& sysroot, Check check) {
  auto problems = check();
  for (int i = 0; i < 20 && !problems.empty() && sysroot.is_real_root(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    problems = check();
  }
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
