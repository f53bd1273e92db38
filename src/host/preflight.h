// host: `passvm check`, is this host able to pass a device through?
//
// Each line is pass, warn or fail, says what was looked at, and for anything
// short of pass, the command or setting that fixes it. Only things that would
// make a passthrough VM fail are "fail"; things that make it slower or that
// `passvm reserve` fixes by itself are "warn".
//
// With a user (`check --user alice`), the process-dependent lines are about
// that user instead of the caller: read-write access to /dev/kvm,
// /dev/vfio/vfio and each device's /dev/vfio/GROUP judged from owner, group
// and mode against the user's uid and groups, and the RLIMIT_MEMLOCK their
// login sessions get from pam_limits (limits.conf and limits.d).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "host/host_users.h"
#include "host/pci_address.h"
#include "host/sysroot.h"

namespace passvm::host {

enum class Verdict { Pass, Warn, Fail };
std::string_view verdict_name(Verdict v);

struct CheckLine {
  Verdict verdict;
  std::string name;
  std::string detail;
  std::string fix;  // empty on pass
};

// What the check needs from the process rather than the filesystem, so tests can vary it.
struct ProcessFacts {
  uint64_t guest_memory = 512ull << 20;
  std::optional<uint64_t> memlock_limit;  // nullopt = unlimited
  bool root = false;
  static ProcessFacts current(uint64_t guest_memory);
};

struct CheckTarget {
  std::optional<HostUser> user{};  // judge access and limits for this user rather than the caller
  std::vector<PciAddress> devices{};  // empty: every reserved device (with a user: those reserved for them)
};

std::vector<CheckLine> run_preflight(const Sysroot& sysroot, const ProcessFacts& facts,
                                     const CheckTarget& target = {});

// What `user` could not open of what a VM built after passvm gave up root to them opens (--user with
// --api-socket: vm.boot, a guest's reboot, vm.add-device build it as that user): /dev/kvm, /dev/vfio/vfio
// when it is there or devices are named, and each of `devices`' group files. Only the failing lines,
// each with its fix; empty when the user can open them all.
std::vector<CheckLine> access_after_drop(const Sysroot& sysroot, const HostUser& user,
                                         const std::vector<PciAddress>& devices);

// The memlock soft limit pam_limits gives `user`'s sessions, and where it comes from.
struct MemlockSetting {
  std::optional<uint64_t> bytes;  // nullopt = unlimited
  std::optional<uint64_t> hard;  // the hard limit, nullopt = unlimited
  std::string source;  // "/etc/security/limits.d/vm.conf:3" or the kernel default
};
MemlockSetting user_memlock(const Sysroot& sysroot, const HostUser& user);

// "512M", "2G", "1048576" (bytes), "64K"; throws HostError naming the format.
uint64_t parse_size(std::string_view text);

}  // namespace passvm::host
