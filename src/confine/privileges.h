// confine: the VMM giving up root once it holds what it needs.
//
// passvm may start as root so it can open what a user could not (a VFIO group
// that was not given to them, /dev/kvm without the kvm group) and lift
// RLIMIT_MEMLOCK, which VFIO charges every pinned guest page against. Nothing
// after set-up needs root: the guest runs on file descriptors already open. So
// the VMM becomes the user it runs for, and a guest that escapes into the VMM
// gets that user's rights, not root's.
//
// Lifetime rules:
//  - resolve_user first, while the command line is parsed: an unknown name is
//    a usage error before anything is opened.
//  - drop_to once, after every privileged open (/dev/kvm, /dev/vfio/vfio,
//    /dev/vfio/GROUP, hugetlbfs, root-owned kernel or initrd files) and before
//    the guest runs. It cannot be undone: whatever is opened later (a device
//    hot-plugged through the API opens /dev/vfio/GROUP then) must be open to
//    the user, which `passvm reserve --user NAME` arranges.
//  - It covers every thread of the process: glibc applies set*id calls to all
//    threads (only threads made with a raw clone() would escape that), so it
//    may run before or after the vCPU threads exist.
//  - A failure throws ConfineError; the process is then in an unknown state
//    (part of the switch may have happened) and must exit, not carry on as root.
//
// Typical use by the VMM's `--user NAME`:
//
//   std::optional<confine::UserIds> user;
//   if (!options.user.empty()) user = confine::resolve_user(options.user);   // at parse time
//   ... open kvm, vfio container and groups, allocate guest memory ...
//   if (user) confine::drop_to(*user, confine::memlock_for_guest(guest_ram_bytes));
//   ... map guest RAM for DMA, run vCPUs ...
//
// Ptrace and core dumps: changing uids makes the kernel mark the process
// non-dumpable. It stays so (see drop_to).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace passvm::confine {

// One line naming what failed and how to fix it.
class ConfineError : public std::runtime_error {
 public:
  explicit ConfineError(const std::string& message) : std::runtime_error(message) {}
};

struct UserIds {
  uid_t uid = 0;
  gid_t gid = 0;  // the login group
  std::vector<gid_t> groups;  // supplementary groups, the login group included
  std::string name;
};

// The user database's entry (NSS: /etc/passwd, LDAP, ...) with all the user's groups.
// Throws ConfineError naming the user when there is no such user.
UserIds resolve_user(const std::string& name);

// RLIMIT_MEMLOCK a VMM with `guest_ram` bytes of guest memory needs: all of it is pinned
// for DMA, plus a margin for the VMM's own pinned pages (rings, MSI-X tables).
uint64_t memlock_for_guest(uint64_t guest_ram);

// Becomes `user` for good: raises RLIMIT_MEMLOCK (soft and hard) to at least memlock_bytes
// while still root (0 leaves it alone), then sets the supplementary groups, the real,
// effective and saved gids, then the three uids. Then verifies: no capability left
// (CapEff, CapPrm, CapAmb in /proc/self/status), all ids are the user's, setuid(0) fails.
// Must be called as root; refuses uid 0 as a target. Throws ConfineError.
void drop_to(const UserIds& user, uint64_t memlock_bytes);

// Which of `paths` `user` could not open read-write, each with its open's errno: tried in a child that
// becomes the user (groups included), so that ACLs and security modules answer as they will after
// drop_to. Must be called as root. Throws ConfineError when the child cannot become the user.
std::vector<std::pair<std::string, int>> unopenable_as(const UserIds& user, const std::vector<std::string>& paths);

}  // namespace passvm::confine
