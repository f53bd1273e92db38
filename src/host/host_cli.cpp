#include "host/host_cli.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "host/hold_signals.h"
#include "host/host_error.h"
#include "host/host_usage.h"
#include "host/host_users.h"
#include "host/pci_inventory.h"
#include "host/host_lock.h"
#include "host/pptdevs_config.h"
#include "host/preflight.h"
#include "host/reservation_plan.h"
#include "host/sysroot.h"

namespace passvm::host {

namespace {

struct CommonOptions {
  std::string sysroot;
  Sysroot make_sysroot() const { return sysroot.empty() ? Sysroot::from_environment() : Sysroot(sysroot); }
};

void add_common(CLI::App& app, CommonOptions& common) {
  app.add_option("--sysroot", common.sysroot,
                 "Root under which /sys, /proc, /dev, /etc and /run are read and written (default: "
                 "$PASSVM_SYSROOT or /)");
}

std::vector<PciAddress> parse_addresses(const std::vector<std::string>& words) {
  std::vector<PciAddress> addresses;
  for (const auto& w : words) addresses.push_back(PciAddress::parse(w));
  return addresses;
}

void require_root(const Sysroot& sysroot, std::string_view command) {
  if (sysroot.is_real_root() && geteuid() != 0) {
    throw HostError(fmt::format("passvm {} must run as root: it writes to /sys/bus/pci; retry with sudo", command));
  }
}

// Commands (modprobe) run on the real host only: on a --sysroot tree they would load modules into the
// running kernel for a device that is not there. On such a tree a command does nothing and succeeds.
CommandRunner runner_for(const Sysroot& sysroot) {
  if (sysroot.is_real_root()) return run_command;
  return [](const std::vector<std::string>&) { return 0; };
}

void print_messages(const Plan& plan) {
  for (const auto& n : plan.notes) std::cout << n << "\n";
  for (const auto& w : plan.warnings) std::cerr << "warning: " << w << "\n";
  for (const auto& e : plan.errors) std::cerr << "error: " << e << "\n";
}

// A device a failed reservation took, with the driver_override it had before ("" for none).
struct Taken {
  PciAddress address;
  std::string override_before;
};

// A reservation that failed part way: the devices it took from their drivers go back, so that the host is
// as it was (reserving half of what was asked is worse than nothing). Says what it could not undo.
void give_back(const Sysroot& sysroot, const std::vector<Taken>& taken_devices) {
  std::vector<PciAddress> taken;
  for (const auto& t : taken_devices) taken.push_back(t.address);
  auto devices_now = scan_devices(sysroot);
  Plan undo = plan_release(sysroot, devices_now, taken);
  // A release clears the override a device was reserved over unless another tool set it; here it goes
  // back to what it was, set by hand (vfio-pci) included: the host as it was, not as a release leaves it.
  // After the driver's bind, which an override naming another driver would prevent.
  for (const auto& t : taken_devices) {
    auto dev = find_device(devices_now, t.address);
    if (dev && !t.override_before.empty())
      undo.steps.push_back({Step::Kind::Write, dev->sysfs_dir() + "/driver_override", t.override_before, false});
  }
  std::vector<std::string> warnings;
  try {
    if (!undo.errors.empty()) throw HostError(undo.errors.front());
    execute(sysroot, undo, runner_for(sysroot), warnings);
  } catch (const HostError& e) {
    warnings.push_back(e.what());
  }
  for (const auto& w : warnings) std::cerr << "warning: while giving the devices back: " << w << "\n";
  auto devices = scan_devices(sysroot);
  for (const auto& t : taken_devices) {
    const PciAddress& address = t.address;
    auto dev = find_device(devices, address);
    if (!dev) continue;
    // Marked for vfio-pci as it was before is given back, once its driver has it again.
    if (dev->on_vfio() || (dev->reserved() && (t.override_before != dev->driver_override || dev->driver.empty())))
      std::cerr << fmt::format("error: {} is still reserved; `passvm release {}` gives it back\n", address.str(),
                               address.str());
    else
      std::cerr << fmt::format("{}: given back (driver {}{})\n", address.str(), dev->driver.empty() ? "none" : dev->driver,
                               dev->driver_override.empty() ? "" : ", driver_override " + dev->driver_override + " as before");
  }
}

// Runs a plan and checks the outcome; returns the exit status.
int carry_out(const Sysroot& sysroot, const Plan& plan, bool dry_run, bool verbose, bool reserving) {
  print_messages(plan);
  if (!plan.errors.empty()) return 1;
  if (dry_run || verbose) {
    for (const auto& step : plan.steps) std::cout << (dry_run ? "would: " : "") << step.describe() << "\n";
  }
  if (dry_run) return 0;
  HoldSignals hold(reserving ? "reservation" : "release");
  // What a failure gives back: what this plan reserved, and what it took from a host driver even though
  // marked for vfio-pci already (an override set by hand, or a boot claim the driver raced).
  std::vector<Taken> taken;
  if (reserving) {
    auto before = scan_devices(sysroot);
    for (const auto& address : plan.targets)
      if (auto dev = find_device(before, address); dev && (!dev->reserved() || (!dev->on_vfio() && !dev->driver.empty())))
        taken.push_back({address, dev->driver_override});
  }
  std::vector<std::string> warnings, problems;
  try {
    execute(sysroot, plan, runner_for(sysroot), warnings);
  } catch (const HostError& e) {
    problems.push_back(e.what());
  }
  for (const auto& w : warnings) std::cerr << "warning: " << w << "\n";
  if (problems.empty()) {
    problems = reserving ? verify_reserved(sysroot, plan.targets) : verify_released(sysroot, plan.targets);
  } else if (reserving) {
    // A step that failed because vfio-pci did not take a device (its group node never appeared) says
    // less than what the kernel did: that goes first.
    auto cause = verify_reserved(sysroot, plan.targets);
    problems.insert(problems.begin(), cause.begin(), cause.end());
  }
  for (const auto& p : problems) std::cerr << "error: " << p << "\n";
  if (!problems.empty()) {
    if (!taken.empty()) give_back(sysroot, taken);
    return 1;
  }
  auto devices = scan_devices(sysroot);
  for (const auto& address : plan.targets) {
    auto dev = find_device(devices, address);
    if (!dev) continue;
    if (reserving) {
      auto record = read_reservation(sysroot, address);
      std::cout << fmt::format("{}: reserved, bound to vfio-pci, /dev/vfio/{}{}\n", address.str(),
                               dev->iommu_group ? std::to_string(*dev->iommu_group) : "?",
                               record && !record->user.empty() ? ", given to " + record->user : "");
    } else {
      std::cout << fmt::format("{}: released, driver {}\n", address.str(), dev->driver.empty() ? "none" : dev->driver);
    }
  }
  return 0;
}

// Who a reserved device was given to; "" for root or when not reserved.
std::string owner_of(const Sysroot& sysroot, const HostDevice& device) {
  if (!device.reserved()) return "";
  auto record = read_reservation(sysroot, device.address);
  return record ? record->user : "";
}

int run_list(const Sysroot& sysroot, bool json) {
  auto devices = scan_devices(sysroot);
  if (devices.empty() && !sysroot.exists("/sys/bus/pci/devices")) {
    throw HostError(fmt::format("{} does not exist: is sysfs mounted (or --sysroot right)?",
                                sysroot.path("/sys/bus/pci/devices").string()));
  }
  const HostRoutes routes = host_routes(sysroot);
  if (json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& d : devices) {
      auto group = group_status(devices, d);
      std::string owner = owner_of(sysroot, d);
      nlohmann::json blockers = nlohmann::json::array();
      for (const auto& b : group.blockers) blockers.push_back({{"address", b.address.str()}, {"driver", b.driver}});
      out.push_back({
          {"address", d.address.str()},
          {"vendor", fmt::format("{:04x}", d.vendor)},
          {"device", fmt::format("{:04x}", d.device)},
          {"class", fmt::format("{:06x}", d.class_code)},
          {"class_name", class_name(d.class_code)},
          {"driver", d.driver.empty() ? nlohmann::json(nullptr) : nlohmann::json(d.driver)},
          {"driver_override", d.driver_override.empty() ? nlohmann::json(nullptr) : nlohmann::json(d.driver_override)},
          {"iommu_group", d.iommu_group ? nlohmann::json(*d.iommu_group) : nlohmann::json(nullptr)},
          {"reserved", d.reserved()},
          {"owner", owner.empty() ? nlohmann::json(nullptr) : nlohmann::json(owner)},
          {"ready", ready_for_passthrough(devices, d)},
          {"group_blockers", blockers},
          {"host_uses", host_uses(sysroot, d, routes)},
      });
    }
    std::cout << out.dump(2) << "\n";
    return 0;
  }
  std::cout << fmt::format("{:<13} {:<9} {:<22} {:<14} {:>5}  {:<8} {:<10} {}\n", "ADDRESS", "ID", "CLASS", "DRIVER",
                           "GROUP", "RESERVED", "OWNER", "READY");
  for (const auto& d : devices) {
    std::string ready = ready_for_passthrough(devices, d) ? "yes" : "no";
    auto group = group_status(devices, d);
    if (d.reserved() && !group.blockers.empty()) ready += " (group shared with " + group.blockers.front().address.str() + ")";
    if (!host_uses(sysroot, d, routes).empty()) ready += " (host uses it)";
    std::string owner = owner_of(sysroot, d);
    std::cout << fmt::format("{:<13} {:04x}:{:04x} {:<22} {:<14} {:>5}  {:<8} {:<10} {}\n", d.address.str(), d.vendor,
                             d.device, class_name(d.class_code), d.driver.empty() ? "-" : d.driver,
                             d.iommu_group ? std::to_string(*d.iommu_group) : "-", d.reserved() ? "yes" : "no",
                             owner.empty() ? "-" : owner, ready);
  }
  return 0;
}

int run_check(const Sysroot& sysroot, const std::string& memory, const std::string& user,
              const std::vector<std::string>& devices, bool json) {
  CheckTarget target{user.empty() ? std::nullopt : std::optional(lookup_user(sysroot, user)), parse_addresses(devices)};
  auto lines = run_preflight(sysroot, ProcessFacts::current(parse_size(memory)), target);
  bool failed = false;
  nlohmann::json out = nlohmann::json::array();
  for (const auto& l : lines) {
    failed = failed || l.verdict == Verdict::Fail;
    if (json) {
      out.push_back({{"verdict", verdict_name(l.verdict)}, {"name", l.name}, {"detail", l.detail}, {"fix", l.fix}});
    } else {
      std::cout << fmt::format("[{}] {}: {}\n", verdict_name(l.verdict), l.name, l.detail);
      if (!l.fix.empty()) std::cout << fmt::format("       fix: {}\n", l.fix);
    }
  }
  if (json) std::cout << out.dump(2) << "\n";
  return failed ? 1 : 0;
}

// The options a config line asks for: user= names who gets the device's group.
ReserveOptions configured_options(const Sysroot& sysroot, const ConfiguredDevice& device, const std::string& config) {
  ReserveOptions options;
  if (device.user.empty()) return options;
  try {
    options.user = lookup_user(sysroot, device.user);
  } catch (const HostError& e) {
    throw HostError(fmt::format("{} (user= of {} in {})", e.what(), device.address.str(), config));
  }
  return options;
}

// Throws when the device at a configured address is not the one its line's id= expects.
void check_configured_id(const std::vector<HostDevice>& devices, const ConfiguredDevice& configured) {
  auto dev = find_device(devices, configured.address);
  if (!dev) return;  // the plan says it is missing
  if (auto why = id_mismatch(configured, {dev->vendor, dev->device}, class_name(dev->class_code))) throw HostError(*why);
}

// Called by udev for every PCI "add": claims the device when the config lists it. Prints udev
// environment lines on stdout (for IMPORT{program}) and nothing else there.
int run_boot_claim(const Sysroot& sysroot, const std::string& kernel_name, const std::string& config) {
  PciAddress address;
  try {
    address = PciAddress::parse(kernel_name);
  } catch (const HostError&) {
    return 0;  // a name no config line can hold (a device behind VMD): not ours
  }
  // Lines that cannot be read are not this call's business (it runs for every PCI device at boot):
  // the service's --apply-config reports them once.
  auto listed = load_pptdevs(sysroot, config);
  if (!listed) return 0;
  const auto& entries = listed->devices;
  auto entry = std::find_if(entries.begin(), entries.end(), [&](const auto& d) { return d.address == address; });
  if (entry == entries.end()) return 0;
  // Only a listed device waits for the lock: every PCI device's "add" runs this at boot.
  HostLock lock(sysroot);
  auto devices = scan_devices(sysroot);
  ReserveOptions options;
  try {
    check_configured_id(devices, *entry);
    options = configured_options(sysroot, *entry, config);
  } catch (const HostError& e) {
    std::cerr << "passvm: not claiming " << address.str() << ": " << e.what() << "\n";
    return 1;
  }
  Plan plan = plan_reserve(sysroot, devices, {address}, options);
  for (const auto& w : plan.warnings) std::cerr << "passvm: warning: " << w << "\n";
  if (!plan.errors.empty()) {
    for (const auto& e : plan.errors) std::cerr << "passvm: not claiming " << address.str() << ": " << e << "\n";
    return 1;
  }
  std::vector<std::string> warnings;
  execute(sysroot, plan, runner_for(sysroot), warnings);
  for (const auto& w : warnings) std::cerr << "passvm: warning: " << w << "\n";
  std::cout << "PASSVM_PPTDEV=1\n";
  return 0;
}

int run_apply_config(const Sysroot& sysroot, const std::string& config, bool dry_run, bool verbose) {
  auto listed = load_pptdevs(sysroot, config);
  if (!listed) {
    throw HostError(fmt::format("no {}: create it with one device per line (or pptdevs=\"1/0/0 2/0/0\")",
                                sysroot.path(config).string()));
  }
  int status = 0;
  // A line that cannot be read keeps its devices on the host, and only those.
  for (const auto& e : listed->errors) {
    std::cerr << "error: " << e << "\n";
    status = 1;
  }
  for (const auto& device : listed->devices) {
    // One device at a time: at boot, a device that cannot be claimed must not keep the others on the host.
    try {
      auto devices = scan_devices(sysroot);
      check_configured_id(devices, device);
      Plan plan = plan_reserve(sysroot, devices, {device.address}, configured_options(sysroot, device, config));
      status |= carry_out(sysroot, plan, dry_run, verbose, true);
    } catch (const HostError& e) {
      std::cerr << "error: " << e.what() << "\n";
      status = 1;
    }
  }
  return status;
}

}  // namespace

bool is_host_command(const char* word) {
  std::string_view w = word ? word : "";
  return w == "list" || w == "reserve" || w == "release" || w == "check";
}

int host_main(int argc, char** argv) {
  std::string name = argc > 0 && argv[0] ? argv[0] : "passvm";
  // Tolerate being called as host_main("passvm", "list", ...) as well as ("passvm list", ...).
  if (argc > 1 && !is_host_command(name.substr(name.rfind(' ') + 1).c_str()) && is_host_command(argv[1])) {
    name += std::string(" ") + argv[1];
    --argc;
    ++argv;
  }
  std::string command = name.substr(name.rfind(' ') + 1);
  CLI::App app;
  app.name(name);
  CommonOptions common;
  add_common(app, common);

  bool json = false, force = false, with_group = false, dry_run = false, verbose = false, apply_config = false;
  std::string boot_claim, memory = "512M", config(kDefaultConfigPath), user;
  std::vector<std::string> devices;
  if (command == "list") {
    app.description("List the host's PCI devices, their drivers, IOMMU groups and passthrough readiness.");
    app.add_flag("--json", json, "Machine-readable output");
  } else if (command == "reserve") {
    app.description("Take devices away from host drivers and bind them to vfio-pci.");
    app.add_option("devices", devices, "Devices: DDDD:BB:SS.F, BB:SS.F or bhyve's B/S/F");
    app.add_flag("--force", force, "Reserve even a device the host needs (mounted disk, console)");
    app.add_flag("--with-group", with_group, "Also reserve IOMMU-group members still on host drivers");
    app.add_flag("-n,--dry-run", dry_run, "Print the sysfs writes instead of doing them");
    app.add_flag("-v,--verbose", verbose, "Print each sysfs write");
    app.add_option("--user", user, "Give this user the devices' /dev/vfio/GROUP, so they can run the VM");
    app.add_option("--boot-claim", boot_claim, "(udev) claim this device if the config lists it");
    app.add_flag("--apply-config", apply_config, "Reserve every device listed in the config");
    app.add_option("--config", config, "Persistent reservation list")->capture_default_str();
  } else if (command == "release") {
    app.description("Give reserved devices back to their host driver.");
    app.add_option("devices", devices, "Devices: DDDD:BB:SS.F, BB:SS.F or bhyve's B/S/F");
    app.add_flag("-n,--dry-run", dry_run, "Print the sysfs writes instead of doing them");
    app.add_flag("-v,--verbose", verbose, "Print each sysfs write");
  } else if (command == "check") {
    app.description("Preflight: can this host pass a device through to a guest?");
    app.add_option("--memory", memory, "Guest memory size to check limits against")->capture_default_str();
    app.add_option("--user", user, "Check what this user lacks to run the VM, rather than the caller");
    app.add_option("devices", devices, "Devices the VM gets (default: every reserved one, or the user's)");
    app.add_flag("--json", json, "Machine-readable output");
  } else {
    std::cerr << fmt::format("error: unknown command '{}'; use list, reserve, release or check\n", command);
    return 2;
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int status = app.exit(e);  // prints help or the parse error
    return status == 0 ? 0 : 2;
  }

  try {
    Sysroot sysroot = common.make_sysroot();
    // A relative --config is the caller's, not the host root's (or --sysroot's).
    if (!config.empty() && config.front() != '/') config = std::filesystem::absolute(config).string();
    if (command == "list") return run_list(sysroot, json);
    if (command == "check") return run_check(sysroot, memory, user, devices, json);
    if (command == "reserve") {
      int modes = (!devices.empty()) + (!boot_claim.empty()) + apply_config;
      if (modes != 1) {
        throw HostError("reserve needs exactly one of: device addresses, --boot-claim DEVICE or --apply-config; "
                        "e.g. `passvm reserve 0000:00:03.0`");
      }
      if (!user.empty() && devices.empty()) {
        throw HostError("--user goes with device addresses; for the config, write `ADDRESS user=NAME` in it");
      }
      if ((apply_config || !boot_claim.empty()) && (force || with_group)) {
        throw HostError(fmt::format("{} goes with device addresses: the config's devices are reserved as the config "
                                    "says; to reserve a device the host uses, run `passvm reserve {}ADDRESS`",
                                    force ? "--force" : "--with-group", force ? "--force " : "--with-group "));
      }
      if (!boot_claim.empty() && (dry_run || verbose)) {
        throw HostError("--boot-claim is udev's and always acts; to see what the config would do, run `passvm "
                        "reserve --apply-config --dry-run`");
      }
      if (!dry_run) require_root(sysroot, command);
      if (!boot_claim.empty()) return run_boot_claim(sysroot, boot_claim, config);
      std::optional<HostLock> lock;
      if (!dry_run) lock.emplace(sysroot);
      if (apply_config) return run_apply_config(sysroot, config, dry_run, verbose);
      ReserveOptions options{force, with_group, user.empty() ? std::nullopt : std::optional(lookup_user(sysroot, user))};
      Plan plan = plan_reserve(sysroot, scan_devices(sysroot), parse_addresses(devices), options);
      return carry_out(sysroot, plan, dry_run, verbose, true);
    }
    // release
    if (devices.empty()) throw HostError("release needs device addresses, e.g. `passvm release 0000:00:03.0`");
    if (!dry_run) require_root(sysroot, command);
    std::optional<HostLock> lock;
    if (!dry_run) lock.emplace(sysroot);
    Plan plan = plan_release(sysroot, scan_devices(sysroot), parse_addresses(devices));
    return carry_out(sysroot, plan, dry_run, verbose, false);
  } catch (const HostError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: unexpected failure: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace passvm::host
