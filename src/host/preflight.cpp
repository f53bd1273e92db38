#include "host/preflight.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <charconv>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "host/host_error.h"
#include "host/pci_inventory.h"

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
                         "enable VT-d or AMD-Vi in firmware and boot with intel_iommu=on (Intel) or "
                         "amd_iommu=on (AMD)"));
  } else {
    lines.push_back(pass("iommu", fmt::format("{} IOMMU unit(s): {}", units.size(), fmt::join(units, ", "))));
  }
  size_t groups = sysroot.list("/sys/kernel/iommu_groups").size();
  if (groups == 0) {
    lines.push_back(fail("iommu groups", "/sys/kernel/iommu_groups is empty: the IOMMU is not translating",
                         "boot with intel_iommu=on (or amd_iommu=on) and without iommu=off"));
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
  // VFIO pins all guest RAM; a little more covers the VMM's own pinned pages.
  uint64_t needed = facts.guest_memory + (16ull << 20);
  if (*facts.memlock_limit >= needed) return pass(name, detail);
  if (facts.root) return pass(name, detail + "; root has CAP_IPC_LOCK, which bypasses it");
  return fail(name, detail + ": VFIO cannot pin guest memory",
              fmt::format("`ulimit -l {}` (KiB) or LimitMEMLOCK=infinity in the service, or run as root",
                          needed >> 10));
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

std::vector<CheckLine> check_reserved(const Sysroot& sysroot) {
  std::vector<CheckLine> lines;
  auto devices = scan_devices(sysroot);
  for (const auto& dev : devices) {
    if (!dev.reserved()) continue;
    std::string name = "device " + dev.address.str();
    auto group = group_status(devices, dev);
    if (!dev.on_vfio()) {
      lines.push_back(fail(name, fmt::format("driver_override is vfio-pci but it is bound to {}",
                                             dev.driver.empty() ? "nothing" : dev.driver),
                           "`passvm reserve " + dev.address.str() + "`"));
    } else if (!group.has_group) {
      lines.push_back(fail(name, "on vfio-pci but without an IOMMU group", "enable the IOMMU (see above)"));
    } else if (!group.viable()) {
      const auto& b = group.blockers.front();
      lines.push_back(fail(name,
                           fmt::format("IOMMU group {} is not viable: {} is on host driver {}", *dev.iommu_group,
                                       b.address.str(), b.driver),
                           "`passvm reserve --with-group " + dev.address.str() + "`"));
    } else if (!sysroot.exists(fmt::format("/dev/vfio/{}", *dev.iommu_group))) {
      lines.push_back(fail(name, fmt::format("/dev/vfio/{} is missing", *dev.iommu_group),
                           "`passvm release " + dev.address.str() + " && passvm reserve " + dev.address.str() + "`"));
    } else {
      lines.push_back(pass(name, fmt::format("ready for passthrough (group {}, /dev/vfio/{})", *dev.iommu_group,
                                             *dev.iommu_group)));
    }
  }
  if (lines.empty()) {
    lines.push_back(warn("devices", "no device is reserved for passthrough", "`passvm reserve DDDD:BB:SS.F`"));
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

std::vector<CheckLine> run_preflight(const Sysroot& sysroot, const ProcessFacts& facts) {
  std::vector<CheckLine> lines;
  lines.push_back(check_kvm(sysroot));
  for (auto& l : check_iommu(sysroot)) lines.push_back(std::move(l));
  for (auto& l : check_modules(sysroot)) lines.push_back(std::move(l));
  if (sysroot.exists("/dev/vfio/vfio")) {
    lines.push_back(pass("/dev/vfio/vfio", "present"));
  } else {
    lines.push_back(warn("/dev/vfio/vfio", "missing (appears when vfio loads)", "`modprobe vfio-pci`"));
  }
  lines.push_back(check_memlock(facts));
  lines.push_back(check_thp(sysroot));
  lines.push_back(check_hugepages(sysroot, facts));
  for (auto& l : check_reserved(sysroot)) lines.push_back(std::move(l));
  return lines;
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
