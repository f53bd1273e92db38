// host: HostLock, one reserve or release at a time on a host.
//
// Why: udev runs a boot claim per PCI device, several at once; the boot service's --apply-config and a
// user's reserve or release may run beside them. Each plans from what it reads of sysfs and then writes,
// so two of them at one device can undo each other: one's rollback hands the device back to its host
// driver after the other bound it to vfio-pci, or a release unbinds what a reserve is verifying. Each
// acting command takes this lock (flock(2) on /run/passvm/lock, below --sysroot) from its first read of
// the host to its last write; another waits for it. Listing, checking and --dry-run read only, and
// take no lock.
//
// Lifetime: held from construction to destruction; the kernel drops it if the process dies.
#pragma once

#include <chrono>

#include "host/sysroot.h"

namespace passvm::host {

class HostLock {
 public:
  static constexpr std::chrono::milliseconds kDefaultWait{60000};

  // Waits up to `wait` for the lock; then throws HostError naming the process that holds it.
  explicit HostLock(const Sysroot& sysroot, std::chrono::milliseconds wait = kDefaultWait);
  ~HostLock();
  HostLock(const HostLock&) = delete;
  HostLock& operator=(const HostLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace passvm::host
