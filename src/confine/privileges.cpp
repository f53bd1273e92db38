#include "confine/privileges.h"

#include <grp.h>
#include <pwd.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace passvm::confine {

namespace {

[[noreturn]] void fail_errno(const std::string& what, int err) {
  throw ConfineError(fmt::format("{}: {}", what, std::strerror(err)));
}

// The capability masks the kernel reports for this thread, by name ("CapEff" -> "0000000000000000").
std::string capability_line(const std::string& status, std::string_view key) {
  std::istringstream lines(status);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.starts_with(key) && line.size() > key.size() && line[key.size()] == ':') {
      auto value = line.substr(key.size() + 1);
      return value.substr(value.find_first_not_of(" \t"));
    }
  }
  return "";
}

void raise_memlock(uint64_t bytes) {
  if (bytes == 0) return;
  rlimit limit{};
  if (getrlimit(RLIMIT_MEMLOCK, &limit) != 0) fail_errno("getrlimit(RLIMIT_MEMLOCK)", errno);
  auto at_least = [bytes](rlim_t current) {
    return current == RLIM_INFINITY || current >= bytes ? current : static_cast<rlim_t>(bytes);
  };
  rlimit wanted{at_least(limit.rlim_cur), at_least(limit.rlim_max)};
  if (wanted.rlim_cur == limit.rlim_cur && wanted.rlim_max == limit.rlim_max) return;
  if (setrlimit(RLIMIT_MEMLOCK, &wanted) != 0) {
    int err = errno;
    throw ConfineError(fmt::format("raising RLIMIT_MEMLOCK to {} MiB: {}{}", bytes >> 20, std::strerror(err),
                                   err == EPERM ? fmt::format(" (beyond the hard limit of {} MiB it takes "
                                                              "CAP_SYS_RESOURCE, which this root lacks)",
                                                              limit.rlim_max >> 20)
                                                : ""));
  }
}

void verify_dropped(const UserIds& user) {
  uid_t ruid = 0, euid = 0, suid = 0;
  gid_t rgid = 0, egid = 0, sgid = 0;
  getresuid(&ruid, &euid, &suid);
  getresgid(&rgid, &egid, &sgid);
  if (ruid != user.uid || euid != user.uid || suid != user.uid || rgid != user.gid || egid != user.gid ||
      sgid != user.gid) {
    throw ConfineError(fmt::format("after dropping to {}: uids {}/{}/{}, gids {}/{}/{}, expected {} and {}",
                                   user.name, ruid, euid, suid, rgid, egid, sgid, user.uid, user.gid));
  }
  std::ifstream in("/proc/self/status");
  std::stringstream status;
  status << in.rdbuf();
  for (std::string_view set : {"CapEff", "CapPrm", "CapAmb"}) {
    std::string mask = capability_line(status.str(), set);
    // Kernels before 4.3 have no CapAmb line: nothing ambient to keep there.
    if (mask.empty() && set == "CapAmb") continue;
    if (mask.empty() || mask.find_first_not_of('0') != std::string::npos) {
      throw ConfineError(fmt::format("after dropping to {}: {} is {} instead of empty (SECBIT_KEEP_CAPS or a "
                                     "file capability kept it); refusing to run with it",
                                     user.name, set, mask.empty() ? "unreadable" : mask));
    }
  }
  // A uid 0 left in any of the three ids would let this succeed. The raw call tries it on this thread
  // only: glibc's setuid() would make every thread try, and threads already confined by seccomp may
  // make no id change but the drop itself.
  if (syscall(SYS_setuid, 0) == 0) throw ConfineError(fmt::format("after dropping to {}: setuid(0) still succeeds", user.name));
}

}  // namespace

UserIds resolve_user(const std::string& name) {
  long hint = sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buffer(hint > 0 ? static_cast<size_t>(hint) : 16384);
  passwd entry{};
  passwd* found = nullptr;
  int err = 0;
  while ((err = getpwnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found)) == ERANGE) {
    buffer.resize(buffer.size() * 2);
  }
  if (err != 0) fail_errno(fmt::format("looking up user '{}'", name), err);
  if (!found) {
    throw ConfineError(fmt::format("unknown user '{}': no such entry in the user database (`getent passwd {}`)",
                                   name, name));
  }
  UserIds ids{entry.pw_uid, entry.pw_gid, {}, entry.pw_name};
  int count = 32;
  std::vector<gid_t> groups(static_cast<size_t>(count));
  while (getgrouplist(entry.pw_name, entry.pw_gid, groups.data(), &count) < 0) {
    // count now says how many there are; a second failure means the list grew meanwhile.
    groups.resize(static_cast<size_t>(count) + 8);
    count = static_cast<int>(groups.size());
  }
  groups.resize(static_cast<size_t>(count));
  ids.groups = std::move(groups);
  return ids;
}

uint64_t memlock_for_guest(uint64_t guest_ram) { return guest_ram + (16ull << 20); }

void drop_to(const UserIds& user, uint64_t memlock_bytes) {
  if (user.uid == 0) {
    throw ConfineError(fmt::format("refusing to run as '{}': uid 0 keeps every privilege; name an ordinary user",
                                   user.name));
  }
  if (geteuid() != 0) {
    throw ConfineError(fmt::format("dropping privileges to '{}' needs root, and passvm runs as uid {}; start it as "
                                   "root or run it as {} without --user",
                                   user.name, geteuid(), user.name));
  }
  // While root: CAP_SYS_RESOURCE allows raising the hard limit. VFIO charges pinned guest RAM against
  // the soft limit of the process that maps it, once it is no longer exempt through CAP_IPC_LOCK.
  raise_memlock(memlock_bytes);
  // Groups before uids: once the uid is not 0, setgroups and setresgid are no longer allowed.
  if (setgroups(user.groups.size(), user.groups.data()) != 0) fail_errno("setgroups", errno);
  if (setresgid(user.gid, user.gid, user.gid) != 0) fail_errno(fmt::format("setresgid({})", user.gid), errno);
  if (setresuid(user.uid, user.uid, user.uid) != 0) fail_errno(fmt::format("setresuid({})", user.uid), errno);
  // The uid change made the process non-dumpable, and it stays that way on purpose. What passvm reads
  // of itself still works: /proc/self/status is world-readable, and /proc/self/smaps and maps check
  // ptrace access, which the kernel always grants a process on itself. Making it dumpable again would
  // let the user ptrace it (or pidfd_getfd) and take over every descriptor opened as root, such as a
  // VFIO group that was never given to them: more than the user could open alone.
  verify_dropped(user);
}

std::vector<std::pair<std::string, int>> unopenable_as(const UserIds& user, const std::vector<std::string>& paths) {
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) fail_errno("pipe2", errno);
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    fail_errno("fork", e);
  }
  if (pid == 0) {
    // The child of a process with threads: system calls only, then _exit.
    close(pipe_fds[0]);
    if (syscall(SYS_setgroups, user.groups.size(), user.groups.data()) != 0 ||
        syscall(SYS_setresgid, user.gid, user.gid, user.gid) != 0 ||
        syscall(SYS_setresuid, user.uid, user.uid, user.uid) != 0)
      _exit(1);
    for (const std::string& path : paths) {
      int fd = open(path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
      int result = fd >= 0 ? 0 : errno;
      if (fd >= 0) close(fd);
      if (write(pipe_fds[1], &result, sizeof result) != sizeof result) _exit(2);
    }
    _exit(0);
  }
  close(pipe_fds[1]);
  std::vector<int> results(paths.size(), -1);
  size_t got = 0;
  auto* bytes = reinterpret_cast<char*>(results.data());
  for (ssize_t n; got < results.size() * sizeof(int) &&
                  ((n = read(pipe_fds[0], bytes + got, results.size() * sizeof(int) - got)) > 0 || (n < 0 && errno == EINTR));)
    if (n > 0) got += static_cast<size_t>(n);
  close(pipe_fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (got != results.size() * sizeof(int) || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw ConfineError(fmt::format("cannot become '{}' in a child to try what it may open", user.name));
  std::vector<std::pair<std::string, int>> out;
  for (size_t i = 0; i < paths.size(); i++)
    if (results[i] != 0) out.emplace_back(paths[i], results[i]);
  return out;
}

}  // namespace passvm::confine
