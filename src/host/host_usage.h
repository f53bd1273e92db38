// host: does the running host still need this device?
//
// Taking the disk controller that holds / or the GPU showing the console away
// from the host kills the host, so reserve refuses such a device unless
// --force. A device is needed when a block device below its sysfs node (a
// disk, a partition, an NVMe multipath namespace through it, or a disk under a
// device-mapper/md stack) is mounted or used as swap (/proc/self/mountinfo,
// whose device numbers also name a root the kernel mounted as /dev/root;
// /proc/swaps), is held by another block device, or cannot be opened
// exclusively on the real host (ZFS, btrfs members); when it carries an active
// console (/proc/consoles: a serial port below the device, or the VT on the
// boot VGA device); when its network interface (or the bridge or bond it is
// in) carries the host's default route (/proc/net/route, ipv6_route); or when a
// process has one of its GPU nodes open (/dev/dri/*, /dev/nvidiaN): a GPU
// driver's unbind waits for them, and may never end. A NIC with routes to other
// networks is only a caution (host_may_use).
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "host/pci_inventory.h"
#include "host/sysroot.h"

namespace passvm::host {

// The host's routes, per interface, from /proc/net/route and ipv6_route. Read once per command (list,
// reserve) and passed to the checks below, which ask it for every device.
struct HostRoutes {
  std::set<std::string> default_route;  // interfaces that carry a default route, IPv4 or IPv6
  // Routes other than the default one, as "10.0.0.0/24" or "fd00::/64": the networks the host reaches
  // through the interface. Link-local and multicast routes, and the host's own addresses (local routes),
  // are left out: every interface that is up has those.
  std::map<std::string, std::vector<std::string>> networks;
};
HostRoutes host_routes(const Sysroot& sysroot);

// One human-readable reason per use ("nvme0n1p2 is mounted on / (ext4)"); empty when unused.
// probe_exclusive: also try an exclusive open of each idle block device (reserve only: a listing must not
// claim disks, even for an instant, while a mount or a pool import may be starting).
std::vector<std::string> host_uses(const Sysroot& sysroot, const HostDevice& device, const HostRoutes& routes,
                                   bool probe_exclusive = false);

// Uses that do not make the device needed but deserve a warning before it is taken, one sentence each:
// a network interface (or the bridge or bond it is in) with routes other than the default one, which
// the host may be reached through (a management network, NFS or iSCSI storage).
std::vector<std::string> host_may_use(const Sysroot& sysroot, const HostDevice& device, const HostRoutes& routes);

// Processes with one of `nodes` (device paths, "/dev/...") open, as "1234 (Xorg)".
std::vector<std::string> processes_with_open(const Sysroot& sysroot, const std::set<std::string>& nodes);

}  // namespace passvm::host
