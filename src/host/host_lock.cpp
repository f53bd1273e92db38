#include "host/host_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "host/host_error.h"

namespace passvm::host {

namespace {

constexpr std::string_view kLockPath = "/run/passvm/lock";

std::string holder(const Sysroot& sysroot, int fd) {
  char text[32] = {};
  ssize_t n = pread(fd, text, sizeof text - 1, 0);
  std::string pid = n > 0 ? std::string(text, static_cast<size_t>(n)) : "";
  while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
  if (pid.empty()) return "another process";
  auto cmdline = sysroot.read("/proc/" + pid + "/cmdline").value_or("");
  for (char& c : cmdline)
    if (c == '\0') c = ' ';
  while (!cmdline.empty() && cmdline.back() == ' ') cmdline.pop_back();
  return cmdline.empty() ? "process " + pid : fmt::format("process {} ({})", pid, cmdline);
}

}  // namespace

HostLock::HostLock(const Sysroot& sysroot, std::chrono::milliseconds wait) {
  const auto path = sysroot.path(kLockPath);
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  fd_ = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    throw HostError(fmt::format("cannot open {}: {}; passvm reserve and release need a writable /run (run them as "
                                "root)",
                                path.string(), std::strerror(errno)));
  }
  const auto deadline = std::chrono::steady_clock::now() + wait;
  while (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK && errno != EINTR) {
      int err = errno;
      close(fd_);
      throw HostError(fmt::format("cannot lock {}: {}", path.string(), std::strerror(err)));
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      std::string who = holder(sysroot, fd_);
      close(fd_);
      throw HostError(fmt::format("{} has been reserving or releasing devices for {} s ({} is locked); wait for "
                                  "it to finish, or stop it",
                                  who, std::chrono::duration_cast<std::chrono::seconds>(wait).count(),
                                  path.string()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Who holds it, for the message of whoever waits.
  std::string pid = std::to_string(getpid()) + "\n";
  if (ftruncate(fd_, 0) == 0 && pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    // Only the message of a process that waits loses its pid.
  }
}

HostLock::~HostLock() {
  if (fd_ < 0) return;
  if (ftruncate(fd_, 0) != 0) {
    // The pid stays behind; the next holder overwrites it.
  }
  close(fd_);  // releases the lock
}

}  // namespace passvm::host
