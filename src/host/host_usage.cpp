#include "host/host_usage.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace passvm::host {

namespace {

bool under(const std::string& path, const std::string& dir) {
  return path == dir || (path.size() > dir.size() && path.starts_with(dir) && path[dir.size()] == '/');
}

// "/dev/disk/by-uuid/..." or "/dev/mapper/root" -> kernel block name ("nvme0n1p2", "dm-0").
std::string block_name(const Sysroot& sysroot, const std::string& source) {
  if (auto target = sysroot.link_name(source)) return *target;
  return source.substr(source.rfind('/') + 1);
}

// The block device plus everything it is stacked on (dm/md slaves), recursively.
void add_with_slaves(const Sysroot& sysroot, const std::string& name, std::set<std::string>& out, int depth = 0) {
  if (depth > 16 || !out.insert(name).second) return;
  for (const auto& slave : sysroot.list("/sys/class/block/" + name + "/slaves")) {
    add_with_slaves(sysroot, slave, out, depth + 1);
  }
}

struct BlockUse {
  std::string block;  // as named in the mount table, or the kernel's name when it names none
  std::string name;   // the kernel's block name, when known ("" for swap and a source to resolve)
  std::string what;   // "is mounted on / (ext4)" or "is used as swap"
};

// The kernel's name of block device MAJ:MIN ("259:2" -> "nvme0n1p2"), or "".
std::string name_of_number(const Sysroot& sysroot, const std::string& number) {
  return sysroot.link_name("/sys/dev/block/" + number).value_or("");
}

// Mounts from mountinfo, whose MAJ:MIN names the block device even when the source does not (a root
// mounted by the kernel shows as /dev/root); the plain mount table when there is no mountinfo.
void add_mounts(const Sysroot& sysroot, std::vector<BlockUse>& uses) {
  std::string line;
  if (auto info = sysroot.read("/proc/self/mountinfo")) {
    std::istringstream lines(*info);
    while (std::getline(lines, line)) {
      // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPEROPTIONS
      std::istringstream fields(line);
      std::string id, parent, number, root, target, field, type, source;
      if (!(fields >> id >> parent >> number >> root >> target)) continue;
      while (fields >> field && field != "-") {
      }
      if (!(fields >> type >> source)) continue;
      std::string name = number.starts_with("0:") ? "" : name_of_number(sysroot, number);
      if (name.empty() && !source.starts_with("/dev/")) continue;
      uses.push_back({source.starts_with("/dev/") ? source : name, name,
                      fmt::format("is mounted on {} ({})", target, type)});
    }
    return;
  }
  std::istringstream mounts(sysroot.read("/proc/self/mounts").value_or(""));
  while (std::getline(mounts, line)) {
    std::istringstream fields(line);
    std::string source, target, type;
    if (!(fields >> source >> target >> type) || !source.starts_with("/dev/")) continue;
    uses.push_back({source, "", fmt::format("is mounted on {} ({})", target, type)});
  }
}

std::vector<BlockUse> block_uses(const Sysroot& sysroot) {
  std::vector<BlockUse> uses;
  add_mounts(sysroot, uses);
  std::istringstream swaps(sysroot.read("/proc/swaps").value_or(""));
  std::string line;
  while (std::getline(swaps, line)) {
    std::istringstream fields(line);
    std::string source;
    if (!(fields >> source) || !source.starts_with("/dev/")) continue;
    uses.push_back({source, "", "is used as swap"});
  }
  return uses;
}

// Whether the kernel refuses an exclusive open of block device `name`: something holds it (a mounted
// filesystem, swap, a ZFS pool or btrfs volume member, md or device-mapper). Only on the real host.
bool held_exclusively(const Sysroot& sysroot, const std::string& name) {
  if (!sysroot.is_real_root()) return false;
  auto number = sysroot.read_line("/sys/class/block/" + name + "/dev");
  if (!number) return false;
  for (const std::string& node : {"/dev/" + name, "/dev/block/" + *number}) {
    int fd = open(node.c_str(), O_RDONLY | O_EXCL | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) {
      close(fd);
      return false;
    }
    if (errno == EBUSY) return true;
  }
  return false;
}

// `iface` and what is stacked on it (a VLAN, a macvlan: upper_*) or holds it (a bond, a bridge: master),
// and so on up, nearest first.
std::vector<std::string> interface_and_above(const Sysroot& sysroot, const std::string& iface) {
  std::vector<std::string> todo{iface};
  std::set<std::string> seen{iface};
  for (size_t i = 0; i < todo.size() && i < 64; i++) {
    std::string dir = "/sys/class/net/" + todo[i];
    std::vector<std::string> above;
    if (auto master = sysroot.link_name(dir + "/master")) above.push_back(*master);
    for (const auto& entry : sysroot.list(dir))
      if (entry.starts_with("upper_")) above.push_back(entry.substr(6));
    for (const auto& up : above)
      if (seen.insert(up).second) todo.push_back(up);
  }
  return todo;
}

// The network interfaces of `node` (the device's sysfs directory).
std::vector<std::string> interfaces_of(const Sysroot& sysroot, const std::string& node) {
  std::vector<std::string> out;
  for (const auto& iface : sysroot.list("/sys/class/net")) {
    auto dev = sysroot.resolve("/sys/class/net/" + iface + "/device");
    if (dev && under(*dev, node)) out.push_back(iface);
  }
  return out;
}

// The device nodes of the GPU at `node` (its sysfs directory): the DRM nodes below it, and the node
// NVIDIA's driver gives it, which has no sysfs device of its own.
std::set<std::string> gpu_nodes(const Sysroot& sysroot, const HostDevice& device, const std::string& node) {
  std::set<std::string> nodes;
  for (const auto& name : sysroot.list("/sys/class/drm")) {
    auto dir = sysroot.resolve("/sys/class/drm/" + name);
    if (!dir || !under(*dir, node)) continue;
    std::istringstream uevent(sysroot.read("/sys/class/drm/" + name + "/uevent").value_or(""));
    for (std::string line; std::getline(uevent, line);)
      if (line.starts_with("DEVNAME=")) nodes.insert("/dev/" + line.substr(8));
  }
  std::istringstream info(
      sysroot.read("/proc/driver/nvidia/gpus/" + device.address.str() + "/information").value_or(""));
  for (std::string line; std::getline(info, line);) {
    if (!line.starts_with("Device Minor:")) continue;
    std::string minor = line.substr(13);
    minor.erase(0, minor.find_first_not_of(" \t"));
    if (!minor.empty()) nodes.insert("/dev/nvidia" + minor);
  }
  return nodes;
}

}  // namespace

HostRoutes host_routes(const Sysroot& sysroot) {
  HostRoutes out;
  std::string line;
  std::istringstream v4(sysroot.read("/proc/net/route").value_or(""));
  while (std::getline(v4, line)) {
    std::istringstream fields(line);
    std::string iface, destination, gateway, flags, refs, use, metric, mask;
    if (!(fields >> iface >> destination >> gateway >> flags >> refs >> use >> metric >> mask)) continue;
    if (destination == "00000000" && mask == "00000000") {
      out.default_route.insert(iface);
      continue;
    }
    uint32_t dest = 0, bits = 0, up = 0;
    if (std::sscanf(destination.c_str(), "%x", &dest) != 1 || std::sscanf(mask.c_str(), "%x", &bits) != 1 ||
        std::sscanf(flags.c_str(), "%x", &up) != 1 || !(up & 1) || bits == 0)
      continue;
    // The kernel prints them in memory order: the first octet is the lowest byte.
    if ((dest & 0xffff) == 0xfea9 || (dest & 0xf0) == 0xe0) continue;  // 169.254.0.0/16 link-local, 224.0.0.0/4
    out.networks[iface].push_back(fmt::format("{}.{}.{}.{}/{}", dest & 0xff, (dest >> 8) & 0xff,
                                              (dest >> 16) & 0xff, dest >> 24, __builtin_popcount(bits)));
  }
  std::istringstream v6(sysroot.read("/proc/net/ipv6_route").value_or(""));
  while (std::getline(v6, line)) {
    // DEST PLEN SRC SPLEN NEXTHOP METRIC REFS USE FLAGS IFACE
    std::istringstream fields(line);
    std::string destination, length, src, srclen, nexthop, metric, refs, use, flags, iface;
    if (!(fields >> destination >> length >> src >> srclen >> nexthop >> metric >> refs >> use >> flags >> iface) ||
        destination.size() != 32 || iface == "lo" ||
        !std::all_of(destination.begin(), destination.end(), [](char c) { return std::isxdigit(c) != 0; }))
      continue;
    if (destination == std::string(32, '0') && length == "00") {
      out.default_route.insert(iface);
      continue;
    }
    unsigned plen = 0, f = 0;
    if (std::sscanf(length.c_str(), "%x", &plen) != 1 || std::sscanf(flags.c_str(), "%x", &f) != 1) continue;
    // A cached route (a path MTU or a redirect for one host) is no network the host is reached through.
    constexpr unsigned kUp = 0x1, kReject = 0x200, kAnycast = 0x100000, kCache = 0x1000000, kLocal = 0x80000000;
    if (plen == 0 || !(f & kUp) || (f & (kReject | kAnycast | kCache | kLocal))) continue;
    if (destination.starts_with("fe8") || destination.starts_with("fe9") || destination.starts_with("fea") ||
        destination.starts_with("feb") || destination.starts_with("ff"))
      continue;  // fe80::/10 link-local, ff00::/8 multicast
    in6_addr addr{};
    for (size_t i = 0; i < 16; i++)
      addr.s6_addr[i] = static_cast<uint8_t>(std::stoul(destination.substr(2 * i, 2), nullptr, 16));
    char text[INET6_ADDRSTRLEN] = "?";
    inet_ntop(AF_INET6, &addr, text, sizeof text);
    out.networks[iface].push_back(fmt::format("{}/{}", text, plen));
  }
  return out;
}

std::vector<std::string> processes_with_open(const Sysroot& sysroot, const std::set<std::string>& nodes) {
  std::vector<std::string> out;
  if (nodes.empty()) return out;
  for (const auto& pid : sysroot.list("/proc")) {
    if (pid.empty() || !std::all_of(pid.begin(), pid.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    for (const auto& fd : sysroot.list("/proc/" + pid + "/fd")) {
      // The link's text: resolving it would stat every file of every process, and hang on a dead mount.
      auto target = sysroot.link_target("/proc/" + pid + "/fd/" + fd);
      if (target && nodes.count(*target)) {
        out.push_back(fmt::format("{} ({})", pid, sysroot.read_line("/proc/" + pid + "/comm").value_or("?")));
        break;
      }
    }
  }
  return out;
}

std::vector<std::string> host_uses(const Sysroot& sysroot, const HostDevice& device, const HostRoutes& routes,
                                   bool probe_exclusive) {
  std::vector<std::string> reasons;
  auto node = sysroot.resolve(device.sysfs_dir());
  if (!node) return reasons;

  std::map<std::string, std::string> block_dirs;  // every block device's sysfs directory, resolved once
  for (const auto& name : sysroot.list("/sys/class/block"))
    if (auto path = sysroot.resolve("/sys/class/block/" + name)) block_dirs[name] = *path;
  std::vector<std::string> own_dirs{*node};
  // An NVMe namespace with native multipath is a disk of the subsystem (under /sys/devices/virtual),
  // reached through hidden per-controller paths below this device: it and its partitions are ours too.
  for (const auto& [name, dir] : block_dirs) {
    for (const auto& path_disk : sysroot.list(dir + "/multipath")) {
      auto path = block_dirs.find(path_disk);
      if (path != block_dirs.end() && under(path->second, *node)) {
        own_dirs.push_back(dir);
        break;
      }
    }
  }
  std::set<std::string> own_blocks;
  for (const auto& entry : block_dirs)
    if (std::any_of(own_dirs.begin(), own_dirs.end(), [&](const std::string& own) { return under(entry.second, own); }))
      own_blocks.insert(entry.first);

  std::set<std::string> cited;  // own blocks a reason already names
  if (!own_blocks.empty()) {
    for (const auto& use : block_uses(sysroot)) {
      std::set<std::string> stack;
      add_with_slaves(sysroot, use.name.empty() ? block_name(sysroot, use.block) : use.name, stack);
      for (const auto& name : stack) {
        if (own_blocks.count(name)) {
          std::string via = use.block.ends_with("/" + name) || use.block == name ? "" : fmt::format(" (through {})", name);
          reasons.push_back(fmt::format("{}{} {}", use.block, via, use.what));
          cited.insert(name);
          break;
        }
      }
    }
  }
  for (const auto& name : own_blocks) {
    if (cited.count(name)) continue;
    auto holders = sysroot.list("/sys/class/block/" + name + "/holders");
    if (!holders.empty()) {
      reasons.push_back(fmt::format("{} is held by {} (a device-mapper, LVM, md or bcache device built on it)", name,
                                    holders.front()));
    } else if (probe_exclusive && held_exclusively(sysroot, name)) {
      reasons.push_back(fmt::format("{} is in use: the kernel refuses to open it exclusively (a mounted "
                                    "filesystem, swap, or a member of a ZFS pool, btrfs volume or RAID)",
                                    name));
    }
  }

  // The NIC the host reaches the network through (or the bridge or bond it is part of).
  const std::set<std::string>& routed = routes.default_route;
  for (const auto& iface : interfaces_of(sysroot, *node)) {
    for (const auto& up : interface_and_above(sysroot, iface)) {
      if (!routed.count(up)) continue;
      reasons.push_back(up == iface ? fmt::format("its interface {} carries the host's default route", iface)
                                    : fmt::format("its interface {} is under {}, which carries the host's default "
                                                  "route",
                                                  iface, up));
      break;
    }
  }

  auto consoles = sysroot.read("/proc/consoles");
  bool vt_console = !consoles;  // unknown: assume the VT is in use
  std::istringstream lines(consoles.value_or(""));
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream fields(line);
    std::string name;
    if (!(fields >> name)) continue;
    if (name.starts_with("tty") && name.size() > 3 && std::isdigit(static_cast<unsigned char>(name[3]))) {
      vt_console = true;
      continue;
    }
    auto tty = sysroot.resolve("/sys/class/tty/" + name + "/device");
    if (tty && under(*tty, *node)) reasons.push_back(fmt::format("it carries the console {}", name));
  }
  if (vt_console && sysroot.read_line(device.sysfs_dir() + "/boot_vga").value_or("0") == "1") {
    reasons.push_back("it is the boot VGA device showing the console");
  }

  // A GPU a display server, a compute job or a persistence daemon has open: its driver's unbind would
  // wait for them to close it (NVIDIA's, in an uninterruptible sleep that only a reboot ends).
  if (auto gpu = gpu_nodes(sysroot, device, *node); !gpu.empty()) {
    if (auto users = processes_with_open(sysroot, gpu); !users.empty())
      reasons.push_back(fmt::format("process {} has its GPU open (one of {})", fmt::join(users, ", "),
                                    fmt::join(gpu, ", ")));
  }
  return reasons;
}

std::vector<std::string> host_may_use(const Sysroot& sysroot, const HostDevice& device, const HostRoutes& all) {
  std::vector<std::string> cautions;
  auto node = sysroot.resolve(device.sysfs_dir());
  if (!node) return cautions;
  const auto& routed = all.default_route;
  const auto& routes = all.networks;
  for (const auto& iface : interfaces_of(sysroot, *node)) {
    auto stack = interface_and_above(sysroot, iface);
    if (std::any_of(stack.begin(), stack.end(), [&](const auto& i) { return routed.count(i) > 0; }))
      continue;  // host_uses says so, and refuses it
    for (const auto& up : stack) {
      auto r = routes.find(up);
      if (r == routes.end()) continue;
      cautions.push_back(fmt::format(
          "its interface {}{} carries routes to {}: if the host is reached through that network (SSH, NFS, "
          "iSCSI, a cluster's network), reserving it cuts that off",
          iface, up == iface ? "" : " (under " + up + ")", fmt::join(r->second, ", ")));
      break;
    }
  }
  return cautions;
}

}  // namespace passvm::host
