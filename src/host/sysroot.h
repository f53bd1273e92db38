// host: every sysfs, procfs, /dev, /etc and /run access goes through a Sysroot.
//
// On a real host the root is "/". Unit tests build fake sysfs trees in a temp
// directory and point a Sysroot at it, so the code that decides what to write
// into /sys runs unchanged against them. Paths are always given as absolute
// host paths ("/sys/bus/pci/devices"); the Sysroot prefixes its root.
//
// File ownership is the exception: under a root other than "/", set_owner
// records the owner in ROOT/.passvm-owner/PATH instead of calling chown, and
// owner() reads that record first. Tests then need no privileges, can check
// what would have been chowned, and can give fake device nodes any owner.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace passvm::host {

struct FileOwner {
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t mode = 0;  // permission bits only (0600)
  bool operator==(const FileOwner&) const = default;
};

class Sysroot {
 public:
  explicit Sysroot(std::filesystem::path root = "/");
  // Root from the PASSVM_SYSROOT environment variable, "/" when unset.
  static Sysroot from_environment();

  const std::filesystem::path& root() const { return root_; }
  bool is_real_root() const;
  std::filesystem::path path(std::string_view host_path) const;

  bool exists(std::string_view host_path) const;
  // Whole file, or nullopt when it cannot be read.
  std::optional<std::string> read(std::string_view host_path) const;
  // First line without surrounding whitespace; nullopt when unreadable.
  std::optional<std::string> read_line(std::string_view host_path) const;
  // Names in a directory, sorted; empty when it is missing.
  std::vector<std::string> list(std::string_view host_path) const;
  // Last component of a symlink's target ("../../nvme" -> "nvme"); nullopt when not a link.
  std::optional<std::string> link_name(std::string_view host_path) const;
  // A symlink's target as written, a relative one taken from the link's directory, as a host path (no
  // lookup of it, so nothing on a hung mount is touched).
  std::optional<std::string> link_target(std::string_view host_path) const;
  // Host path with every symlink resolved, expressed as a host path again (root stripped).
  std::optional<std::string> resolve(std::string_view host_path) const;

  // Writes value in one write() call as sysfs wants; throws HostError naming the file on failure.
  void write(std::string_view host_path, std::string_view value) const;
  // Writes a whole regular file, creating its parent directories.
  void write_file(std::string_view host_path, std::string_view content) const;
  void remove(std::string_view host_path) const;

  // Owner, group and permission bits; nullopt when the file does not exist.
  std::optional<FileOwner> owner(std::string_view host_path) const;
  // chown and chmod an existing file; throws HostError naming the file on failure.
  void set_owner(std::string_view host_path, const FileOwner& owner) const;

 private:
  std::filesystem::path root_;
};

}  // namespace passvm::host
