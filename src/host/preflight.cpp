#include "host/preflight.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "confine/privileges.h"
#include "host/host_error.h"
#include "host/pci_inventory.h"
#include "host/reservation_plan.h"

namespace passvm::host {

namespace {

CheckLine pass(std::string name, std::string detail) { return {Verdict::Pass, std::move(name), std::move(detail), ""}; }
CheckLine warn(std::string name, std::string detail, std::string fix) {
  return {Verdict::Warn, std::move(name), std::move(detail), std::move(fix)};
}
CheckLine fail(std::string name, std::string detail, std::string fix) {
  return {Verdict::Fail, std::move(name), std::move(detail), std::move(fix)};
}

std::string mib(uint64_t bytes) { return fmt::format("{} MiB", bytes >> 20); }

bool has_word(const std::string& text, std::string_view word) {
  std::istringstream words(text);
  std::string w;
  while (words >> w) {
    if (w == word) return true;
  }
  return false;
}

CheckLine check_kvm(const Sysroot& sysroot) {
  if (!sysroot.exists("/dev/kvm")) {
    return fail("kvm", "/dev/kvm is missing",
                "enable virtualization (VT-x/AMD-V) in firmware and `modprobe kvm_intel` or `modprobe kvm_amd`");
  }
  int fd = ::open(sysroot.path("/dev/kvm").c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    return fail("kvm", "/dev/kvm exists but cannot be opened read-write",
                "run as root or add the user to the kvm group");
  }
  ::close(fd);
  return pass("kvm", "/dev/kvm present and opens read-write");
}

std::vector<CheckLine> check_iommu(const Sysroot& sysroot) {
  std::vector<CheckLine> lines;
  auto units = sysroot.list("/sys/class/iommu");
  std::string cmdline = sysroot.read_line("/proc/cmdline").value_or("");
  if (units.empty()) {
    lines.push_back(fail("iommu", "no IOMMU registered (/sys/class/iommu is empty)",
                         "turn on VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup; on Intel boot with "
                         "intel_iommu=on (AMD's is on by default); and without iommu=off, intel_iommu=off or "
                         "amd_iommu=off"));
  } else {
    lines.push_back(pass("iommu", fmt::format("{} IOMMU unit(s): {}", units.size(), fmt::join(units, ", "))));
  }
  size_t groups = sysroot.list("/sys/kernel/iommu_groups").size();
  if (groups == 0) {
    lines.push_back(fail("iommu groups", "/sys/kernel/iommu_groups is empty: the IOMMU is not translating",
                         "boot with intel_iommu=on (Intel) and without iommu=off, intel_iommu=off or amd_iommu=off"));
  } else {
    lines.push_back(pass("iommu groups", fmt::format("{} IOMMU groups", groups)));
  }

  // Interrupt remapping: without it VFIO refuses MSI unless allow_unsafe_interrupts is set.
  bool disabled_on_cmdline = has_word(cmdline, "intremap=off") || has_word(cmdline, "nointremap");
  bool unsafe_allowed =
      sysroot.read_line("/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts").value_or("N") == "Y";
  std::vector<std::string> with_ir, without_ir, amd;
  for (const auto& unit : units) {
    std::string dir = "/sys/class/iommu/" + unit;
    if (auto ecap = sysroot.read_line(dir + "/intel-iommu/ecap")) {
      unsigned long long value = 0;
      auto [end, ec] = std::from_chars(ecap->data(), ecap->data() + ecap->size(), value, 16);
      bool ir = ec == std::errc() && (value & (1ull << 3));
      (ir ? with_ir : without_ir).push_back(unit);
    } else if (sysroot.exists(dir + "/amd-iommu") || unit.starts_with("ivhd")) {
      amd.push_back(unit);
    }
  }
  std::string checked = "checked /sys/class/iommu/*/intel-iommu/ecap bit 3 and /proc/cmdline";
  if (units.empty()) {
    lines.push_back(fail("interrupt remapping", "no IOMMU, so no interrupt remapping",
                         "enable the IOMMU first (see above)"));
  } else if (disabled_on_cmdline || !without_ir.empty()) {
    std::string detail = disabled_on_cmdline
                             ? "disabled on the kernel command line (intremap=off / nointremap)"
                             : fmt::format("not supported by {} ({})", fmt::join(without_ir, ", "), checked);
    std::string fix = "enable interrupt remapping (remove intremap=off; on QEMU use -device "
                      "intel-iommu,intremap=on); or, accepting the risk, load vfio_iommu_type1 "
                      "allow_unsafe_interrupts=1";
    lines.push_back(unsafe_allowed ? warn("interrupt remapping", detail + "; allow_unsafe_interrupts=Y is set", fix)
                                   : fail("interrupt remapping", detail, fix));
  } else if (!with_ir.empty()) {
    lines.push_back(pass("interrupt remapping", fmt::format("supported by {} ({})", fmt::join(with_ir, ", "), checked)));
  } else if (!amd.empty()) {
    lines.push_back(pass("interrupt remapping",
                         fmt::format("AMD IOMMU {} (AMD-Vi remaps interrupts unless disabled; checked /proc/cmdline)",
                                     fmt::join(amd, ", "))));
  } else {
    lines.push_back(warn("interrupt remapping", fmt::format("could not tell for IOMMU {}", fmt::join(units, ", ")),
                         "check `dmesg | grep -i remapping` for \"Enabled IRQ remapping\""));
  }
  return lines;
}

std::vector<CheckLine> check_modules(const Sysroot& sysroot) {
  std::vector<CheckLine> lines;
  std::string release = sysroot.read_line("/proc/sys/kernel/osrelease").value_or("");
  std::string moddir = "/lib/modules/" + release;
  std::string deps = sysroot.read(moddir + "/modules.dep").value_or("");
  std::string builtin = sysroot.read(moddir + "/modules.builtin").value_or("");
  struct Module {
    const char* sys_name;
    const char* file;  // as named in modules.dep
  };
  for (Module m : {Module{"vfio", "/vfio.ko"}, Module{"vfio_iommu_type1", "/vfio_iommu_type1.ko"},
                   Module{"vfio_pci", "/vfio-pci.ko"}}) {
    if (sysroot.exists(std::string("/sys/module/") + m.sys_name)) {
      lines.push_back(pass(m.sys_name, "loaded"));
    } else if (deps.find(m.file) != std::string::npos || builtin.find(m.file) != std::string::npos) {
      lines.push_back(warn(m.sys_name, "not loaded, but available in " + moddir,
                           "`modprobe vfio-pci` (passvm reserve does it by itself)"));
    } else {
      lines.push_back(fail(m.sys_name, fmt::format("not loaded and not found in {}/modules.dep", moddir),
                           "install a kernel built with CONFIG_VFIO_PCI (Debian's linux-image has it)"));
    }
  }
  return lines;
}

CheckLine check_memlock(const ProcessFacts& facts) {
  std::string name = "memlock";
  if (!facts.memlock_limit) return pass(name, "RLIMIT_MEMLOCK is unlimited");
  std::string detail = fmt::format("RLIMIT_MEMLOCK {} vs guest memory {}", mib(*facts.memlock_limit),
                                   mib(facts.guest_memory));
  uint64_t needed = confine::memlock_for_guest(facts.guest_memory);
  if (*facts.memlock_limit >= needed) return pass(name, detail);
  if (facts.root) return pass(name, detail + "; root has CAP_IPC_LOCK, which bypasses it");
  return fail(name, detail + ": VFIO cannot pin guest memory",
              fmt::format("`ulimit -l {}` (KiB) or LimitMEMLOCK=infinity in the service, or run as root",
                          needed >> 10));
}

CheckLine check_user_memlock(const Sysroot& sysroot, const HostUser& user, uint64_t guest_memory) {
  std::string name = "memlock";
  MemlockSetting limit = user_memlock(sysroot, user);
  auto text = [](const std::optional<uint64_t>& bytes) { return bytes ? mib(*bytes) : std::string("unlimited"); };
  std::string detail = fmt::format("{}'s RLIMIT_MEMLOCK {} (from {}) vs guest memory {}", user.name, text(limit.bytes),
                                   limit.source, mib(guest_memory));
  uint64_t needed = confine::memlock_for_guest(guest_memory);
  if (user.uid == 0) return pass(name, detail + "; root has CAP_IPC_LOCK, which bypasses it");
  if (!limit.bytes || *limit.bytes >= needed) return pass(name, detail);
  std::string raise = !limit.hard || *limit.hard >= needed
                          ? fmt::format("`ulimit -l {}` before starting passvm (the hard limit allows it), or ",
                                        needed >> 10)
                          : "";
  return fail(name, detail + ": VFIO cannot pin guest memory",
              fmt::format("{}the line `{} - memlock {}` in /etc/security/limits.d/passvm.conf (next login), or "
                          "start passvm as root with --user {}, which raises the limit before dropping privileges",
                          raise, user.name, needed >> 10, user.name));
}

// Why `user` cannot open the file read-write, judged as the kernel does (owner bits for the owner,
// else group bits for a member, else the rest); nullopt when they can.
std::optional<std::string> access_problem(const Sysroot& sysroot, std::string_view path, const FileOwner& owner,
                                          const HostUser& user) {
  if (user.uid == 0) return std::nullopt;
  bool member = std::find(user.groups.begin(), user.groups.end(), owner.gid) != user.groups.end();
  uint32_t bits = owner.uid == user.uid ? owner.mode >> 6 : member ? owner.mode >> 3 : owner.mode;
  if ((bits & 6) == 6) return std::nullopt;
  std::string group = group_name(sysroot, owner.gid);
  return fmt::format("{} is uid {}, group {}, mode {:04o}: {} (uid {}{}) cannot open it read-write", path, owner.uid,
                     group, owner.mode, user.name, user.uid, member ? ", in group " + group : ", not in group " + group);
}

// /dev/kvm or /dev/vfio/vfio for a user; `missing_fix` when the node is not there at all.
CheckLine check_node_access(const Sysroot& sysroot, std::string_view path, const HostUser& user,
                            const std::string& missing_fix) {
  std::string name(path);
  auto owner = sysroot.owner(path);
  if (!owner) return fail(name, fmt::format("{} is missing", path), missing_fix);
  auto problem = access_problem(sysroot, path, *owner, user);
  if (!problem) return pass(name, fmt::format("{} can open it read-write", user.name));
  std::string group = group_name(sysroot, owner->gid);
  std::string fix = (owner->mode & 060) == 060 && owner->gid != 0
                        ? fmt::format("`usermod -aG {} {}` (takes effect at their next login)", group, user.name)
                        : fmt::format("`chmod 0666 {}`, or a udev rule giving it to a group {} is in: "
                                      "KERNEL==\"{}\", GROUP=\"kvm\", MODE=\"0660\"",
                                      path, user.name, name.substr(name.rfind('/') + 1));
  return fail(name, *problem, fix);
}

CheckLine check_hugepages(const Sysroot& sysroot, const ProcessFacts& facts) {
  std::istringstream meminfo(sysroot.read("/proc/meminfo").value_or(""));
  std::string key;
  uint64_t total = 0, free_pages = 0, size_kib = 2048;
  while (meminfo >> key) {
    uint64_t value = 0;
    if (!(meminfo >> value)) break;
    if (key == "HugePages_Total:") total = value;
    if (key == "HugePages_Free:") free_pages = value;
    if (key == "Hugepagesize:") size_kib = value;
    meminfo.ignore(1 << 16, '\n');
  }
  uint64_t free_bytes = free_pages * size_kib * 1024;
  uint64_t want = (facts.guest_memory + size_kib * 1024 - 1) / (size_kib * 1024);
  std::string fix = fmt::format("`echo {} > /proc/sys/vm/nr_hugepages` (optional: fewer IOMMU mappings, faster "
                                "pinning)",
                                want);
  if (total == 0)
    return warn("hugepages", "none reserved (HugePages_Total 0): -S needs them; without -S guest RAM is on "
                "transparent huge pages", fix);
  std::string detail = fmt::format("{} of {} free, {} KiB each ({})", free_pages, total, size_kib, mib(free_bytes));
  if (free_bytes < facts.guest_memory) return warn("hugepages", detail + ": fewer than the guest needs", fix);
  return pass("hugepages", detail);
}

// Guest RAM's default backing: anonymous memory that asks for transparent huge pages (madvise).
CheckLine check_thp(const Sysroot& sysroot) {
  std::string line = sysroot.read("/sys/kernel/mm/transparent_hugepage/enabled").value_or("");
  auto open = line.find('['), close = line.find(']');
  std::string mode = open == std::string::npos || close < open ? "" : line.substr(open + 1, close - open - 1);
  const std::string fix = "`echo madvise > /sys/kernel/mm/transparent_hugepage/enabled`, or reserve hugepages "
                          "and use -S";
  if (mode == "always" || mode == "madvise")
    return pass("transparent huge pages", fmt::format("{}: guest RAM gets 2 MiB pages", mode));
  if (mode.empty())
    return warn("transparent huge pages", "not in this kernel: guest RAM uses 4 KiB pages (slower DMA and nested "
                "paging)", "reserve hugepages and use -S");
  return warn("transparent huge pages", fmt::format("{}: guest RAM uses 4 KiB pages (slower DMA and nested paging)",
                                                    mode), fix);
}

// One device's line; with a user, the group node must also be open to them.
CheckLine check_device(const Sysroot& sysroot, const std::vector<HostDevice>& devices, const HostDevice& dev,
                       const std::optional<HostUser>& user) {
  std::string name = "device " + dev.address.str();
  std::string address = dev.address.str();
  std::string reserve = user ? "passvm reserve --user " + user->name : "passvm reserve";
  auto group = group_status(devices, dev);
  if (!dev.reserved()) {
    return fail(name, fmt::format("not reserved (driver: {})", dev.driver.empty() ? "none" : dev.driver),
                fmt::format("`{} {}`", reserve, address));
  }
  if (!dev.on_vfio()) {
    return fail(name, fmt::format("driver_override is vfio-pci but it is bound to {}",
                                  dev.driver.empty() ? "nothing" : dev.driver),
                fmt::format("`{} {}`", reserve, address));
  }
  if (!group.has_group) return fail(name, "on vfio-pci but without an IOMMU group", "enable the IOMMU (see above)");
  std::string node = fmt::format("/dev/vfio/{}", *dev.iommu_group);
  if (!group.viable()) {
    auto kept = std::find_if(group.blockers.begin(), group.blockers.end(), [&](const HostDevice& d) {
      return kept_by_host(sysroot, d, dev) != KeptMember::none;
    });
    const auto& b = kept != group.blockers.end() ? *kept : group.blockers.front();
    std::string fix = fmt::format("`{} --with-group {}`", reserve, address);
    if (kept != group.blockers.end())
      fix = kept_by_host(sysroot, b, dev) == KeptMember::chipset
                ? fmt::format("none by reserving: {} ({}) stays with the host; put the device in a "
                              "slot with an IOMMU group of its own",
                              b.address.str(), class_name(b.class_code))
                : fmt::format("none on this host: the platform does not isolate virtual functions from "
                              "their physical function {} (no ACS)",
                              b.address.str());
    return fail(name,
                fmt::format("IOMMU group {} is not viable: {} is on host driver {}", *dev.iommu_group,
                            b.address.str(), b.driver),
                fix);
  }
  auto owner = sysroot.owner(node);
  if (!owner) {
    return fail(name, node + " is missing", fmt::format("`passvm release {} && {} {}`", address, reserve, address));
  }
  if (user) {
    if (auto problem = access_problem(sysroot, node, *owner, *user)) {
      return fail(name, *problem, fmt::format("`{} {}`", reserve, address));
    }
  }
  return pass(name, fmt::format("ready for passthrough (group {}, {}{})", *dev.iommu_group, node,
                                user ? ", open to " + user->name : ""));
}

std::vector<CheckLine> check_devices(const Sysroot& sysroot, const CheckTarget& target) {
  std::vector<CheckLine> lines;
  auto devices = scan_devices(sysroot);
  for (const auto& address : target.devices) {
    if (auto dev = find_device(devices, address)) {
      lines.push_back(check_device(sysroot, devices, *dev, target.user));
    } else {
      lines.push_back(fail("device " + address.str(), "no such device (no /sys/bus/pci/devices entry)",
                           "`passvm list` shows the host's PCI devices"));
    }
  }
  if (!target.devices.empty()) return lines;
  for (const auto& dev : devices) {
    if (!dev.reserved()) continue;
    auto record = read_reservation(sysroot, dev.address);
    if (target.user && (!record || record->user != target.user->name)) continue;
    lines.push_back(check_device(sysroot, devices, dev, target.user));
  }
  if (lines.empty()) {
    lines.push_back(warn("devices",
                         target.user ? "no device is reserved for " + target.user->name
                                     : std::string("no device is reserved for passthrough"),
                         target.user ? "`passvm reserve --user " + target.user->name + " DDDD:BB:SS.F`"
                                     : std::string("`passvm reserve DDDD:BB:SS.F`")));
  }
  return lines;
}

}  // namespace

std::string_view verdict_name(Verdict v) {
  switch (v) {
    case Verdict::Pass:
      return "pass";
    case Verdict::Warn:
      return "warn";
    case Verdict::Fail:
      return "fail";
  }
  return "?";
}

ProcessFacts ProcessFacts::current(uint64_t guest_memory) {
  ProcessFacts facts;
  facts.guest_memory = guest_memory;
  rlimit limit{};
  if (getrlimit(RLIMIT_MEMLOCK, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) facts.memlock_limit = limit.rlim_cur;
  facts.root = geteuid() == 0;
  return facts;
}

std::vector<CheckLine> access_after_drop(const Sysroot& sysroot, const HostUser& user,
                                         const std::vector<PciAddress>& devices) {
  std::vector<CheckLine> failing;
  auto keep = [&](CheckLine l) {
    if (l.verdict == Verdict::Fail) failing.push_back(std::move(l));
  };
  keep(check_node_access(sysroot, "/dev/kvm", user, "`modprobe kvm_intel` or `modprobe kvm_amd`"));
  if (!devices.empty() || sysroot.owner("/dev/vfio/vfio"))
    keep(check_node_access(sysroot, "/dev/vfio/vfio", user, "`modprobe vfio-pci`"));
  if (!devices.empty())
    for (auto& l : check_devices(sysroot, CheckTarget{user, devices})) keep(std::move(l));
  return failing;
}

std::vector<CheckLine> run_preflight(const Sysroot& sysroot, const ProcessFacts& facts, const CheckTarget& target) {
  std::vector<CheckLine> lines;
  const auto& user = target.user;
  lines.push_back(user ? check_node_access(sysroot, "/dev/kvm", *user,
                                           "enable virtualization (VT-x/AMD-V) in firmware and `modprobe kvm_intel` "
                                           "or `modprobe kvm_amd`")
                       : check_kvm(sysroot));
  for (auto& l : check_iommu(sysroot)) lines.push_back(std::move(l));
  for (auto& l : check_modules(sysroot)) lines.push_back(std::move(l));
  if (user) {
    lines.push_back(check_node_access(sysroot, "/dev/vfio/vfio", *user, "`modprobe vfio-pci`"));
  } else if (sysroot.exists("/dev/vfio/vfio")) {
    lines.push_back(pass("/dev/vfio/vfio", "present"));
  } else {
    lines.push_back(warn("/dev/vfio/vfio", "missing (appears when vfio loads)", "`modprobe vfio-pci`"));
  }
  lines.push_back(user ? check_user_memlock(sysroot, *user, facts.guest_memory) : check_memlock(facts));
  lines.push_back(check_thp(sysroot));
  lines.push_back(check_hugepages(sysroot, facts));
  for (auto& l : check_devices(sysroot, target)) lines.push_back(std::move(l));
  return lines;
}

MemlockSetting user_memlock(const Sysroot& sysroot, const HostUser& user) {
  std::vector<std::string> files{"/etc/security/limits.conf"};
  for (const auto& name : sysroot.list("/etc/security/limits.d")) {
    if (name.ends_with(".conf")) files.push_back("/etc/security/limits.d/" + name);
  }
  std::vector<std::string> groups;
  for (auto gid : user.groups) groups.push_back(group_name(sysroot, gid));
  // pam_limits' precedence: a line for the user beats one for a group of theirs, which beats a uid
  // range, which beats '*'; among equals the later line wins (limits.conf first, then limits.d by name).
  auto rank = [&](const std::string& domain) -> int {
    if (domain == user.name) return 0;
    if (domain.starts_with("@") && std::find(groups.begin(), groups.end(), domain.substr(1)) != groups.end()) return 1;
    if (auto colon = domain.find(':'); colon != std::string::npos && domain.find_first_not_of("0123456789:") == std::string::npos) {
      uint64_t low = 0, high = UINT64_MAX;
      std::from_chars(domain.data(), domain.data() + colon, low);
      std::from_chars(domain.data() + colon + 1, domain.data() + domain.size(), high);
      return user.uid >= low && user.uid <= high ? 2 : -1;
    }
    return domain == "*" ? 3 : -1;
  };
  struct Best {
    int rank = 99;
    std::optional<uint64_t> bytes;
    std::string where;
  } soft, hard;
  for (const auto& file : files) {
    std::istringstream lines(sysroot.read(file).value_or(""));
    std::string line;
    for (size_t line_no = 1; std::getline(lines, line); ++line_no) {
      std::istringstream words(line.substr(0, line.find('#')));
      std::string domain, type, item, value;
      if (!(words >> domain >> type >> item >> value) || item != "memlock") continue;
      int r = rank(domain);
      if (r < 0) continue;
      std::optional<uint64_t> bytes;
      if (value != "unlimited" && value != "infinity" && value != "-1") {
        uint64_t kib = 0;
        auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), kib);
        if (ec != std::errc() || end != value.data() + value.size()) continue;  // pam_limits skips it too
        bytes = kib << 10;
      }
      std::string where = fmt::format("{}:{}", file, line_no);
      for (Best* best : {&soft, &hard}) {
        bool applies = type == "-" || (best == &soft ? type == "soft" : type == "hard");
        if (applies && r <= best->rank) *best = {r, bytes, where};
      }
    }
  }
  // MLOCK_LIMIT since Linux 5.16 (64 KiB before), inherited unchanged by login sessions.
  constexpr uint64_t kKernelDefault = 8ull << 20;
  MemlockSetting setting;
  setting.bytes = soft.rank < 99 ? soft.bytes : kKernelDefault;
  setting.hard = hard.rank < 99 ? hard.bytes : kKernelDefault;
  setting.source = soft.rank < 99 ? soft.where
                                  : fmt::format("the kernel's default: no memlock line in /etc/security/limits.conf "
                                                "or limits.d/*.conf applies to {}",
                                                user.name);
  return setting;
}

uint64_t parse_size(std::string_view text) {
  auto bad = [&] {
    return HostError(fmt::format("bad size '{}': use a number with an optional K, M or G suffix (e.g. 512M)", text));
  };
  if (text.empty()) throw bad();
  uint64_t shift = 0;
  switch (text.back()) {
    case 'K': case 'k': shift = 10; break;
    case 'M': case 'm': shift = 20; break;
    case 'G': case 'g': shift = 30; break;
    default: break;
  }
  std::string_view digits = shift ? text.substr(0, text.size() - 1) : text;
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || value == 0 ||
      value > (UINT64_MAX >> shift)) {
    throw bad();
  }
  return value << shift;
}

}  // namespace passvm::host
