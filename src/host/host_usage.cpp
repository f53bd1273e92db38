#include "host/host_usage.h"

#include <cctype>
#include <set>
#include <sstream>

#include <fmt/format.h>

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
  std::string block;  // as named in the mount table
  std::string what;  // "mounted on / (ext4)" or "used as swap"
};

std::vector<BlockUse> block_uses(const Sysroot& sysroot) {
  std::vector<BlockUse> uses;
  std::istringstream mounts(sysroot.read("/proc/self/mounts").value_or(""));
  std::string line;
  while (std::getline(mounts, line)) {
    std::istringstream fields(line);
    std::string source, target, type;
    if (!(fields >> source >> target >> type) || !source.starts_with("/dev/")) continue;
    uses.push_back({source, fmt::format("is mounted on {} ({})", target, type)});
  }
  std::istringstream swaps(sysroot.read("/proc/swaps").value_or(""));
  while (std::getline(swaps, line)) {
    std::istringstream fields(line);
    std::string source;
    if (!(fields >> source) || !source.starts_with("/dev/")) continue;
    uses.push_back({source, "is used as swap"});
  }
  return uses;
}

}  // namespace

std::vector<std::string> host_uses(const Sysroot& sysroot, const HostDevice& device) {
  std::vector<std::string> reasons;
  auto node = sysroot.resolve(device.sysfs_dir());
  if (!node) return reasons;

  std::set<std::string> own_blocks;
  for (const auto& name : sysroot.list("/sys/class/block")) {
    auto path = sysroot.resolve("/sys/class/block/" + name);
    if (path && under(*path, *node)) own_blocks.insert(name);
  }
  if (!own_blocks.empty()) {
    for (const auto& use : block_uses(sysroot)) {
      std::set<std::string> stack;
      add_with_slaves(sysroot, block_name(sysroot, use.block), stack);
      for (const auto& name : stack) {
        if (own_blocks.count(name)) {
          std::string via = use.block.ends_with("/" + name) ? "" : fmt::format(" (through {})", name);
          reasons.push_back(fmt::format("{}{} {}", use.block, via, use.what));
          break;
        }
      }
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
  return reasons;
}

}  // namespace passvm::host
