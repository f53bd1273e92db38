// boot/kernel_cache.h: unpacked kernels kept between boots.
//
// Unpacking a distribution kernel's xz payload costs a second of CPU on a
// fast host (and far more in a nested or emulated one): that is most of
// passvm's start-up time. The unpacked segments only depend on the bzImage's
// bytes, so passvm keeps them in a cache file named by the bzImage's SHA-256
// and streams them straight into guest RAM on the next boot. The hash must
// resist collisions: a guest kernel is often untrusted, and one crafted to
// share a weaker hash with a trusted kernel would take its place in that
// kernel's later boots. Hashing costs a little on every boot, so the own
// cache also remembers which hash a kernel file had (by device, inode, size,
// mtime and ctime: a file whose ctime is unchanged has not been written), and
// a later boot of the same unchanged file skips hashing.
//
// Where: the user's own cache, $PASSVM_CACHE_DIR, else $XDG_CACHE_HOME/passvm,
// else ~/.cache/passvm, read and written (as root, only a path that is root's
// throughout: sudo may keep a user's HOME); and a shared one, /var/cache/passvm,
// only read: a system service (or a package's kernel hook) fills it with
// `passvm cache add --shared KERNEL` ahead of time, so that no user's first
// boot of that kernel pays for unpacking. Its entries go straight into guests,
// so they are used only when the directory and the file belong to root (or to
// the user running passvm) and nobody else may write them.
// PASSVM_CACHE_DIR=off disables both. The newest few kernels are kept in a
// directory passvm writes to. A file that is damaged or half-written is
// ignored (and replaced in the own cache); the cache is never needed for a
// boot to work.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "boot/boot_file.h"
#include "boot/vmlinux.h"

namespace passvm::boot {

// Where entries are looked up (own, then shared) and recorded (own). "" leaves a directory out.
struct CacheDirs {
  std::string own;
  std::string shared;
  CacheDirs() = default;
  CacheDirs(std::string own_dir, std::string shared_dir = "")  // NOLINT: a plain directory is the own cache
      : own(std::move(own_dir)), shared(std::move(shared_dir)) {}
  CacheDirs(const char* own_dir) : own(own_dir) {}  // NOLINT
  bool empty() const { return own.empty() && shared.empty(); }
};

inline constexpr const char* kSharedCacheDir = "/var/cache/passvm";

class KernelCache {
 public:
  // The directories from the environment (both "" with PASSVM_CACHE_DIR=off; own "" without a home).
  static CacheDirs default_dirs();
  // The own directory alone, as default_dirs() gives it.
  static std::string default_dir() { return default_dirs().own; }

  // Empty dirs disable the cache: lookups miss, recording does nothing. When the bzImage's file is known
  // (its identity), its hash is looked up in the own cache's file index, and the bytes are read and hashed
  // only when the index has no answer (which is then added to it).
  explicit KernelCache(CacheDirs dirs, KernelImage& bzimage);
  // The same for bytes in memory; file, when given, is the file they are as if read from.
  KernelCache(CacheDirs dirs, std::span<const uint8_t> bzimage, const FileIdentity* file = nullptr);

  // The entry name for a bzImage's bytes (SHA-256, as 32 hex digits, and the size).
  static std::string entry_name(std::span<const uint8_t> bzimage);
  // Whether the last construction found the bzImage's hash in the file index instead of hashing.
  bool hash_from_index() const { return hash_from_index_; }

  // Unpacks bzimage (named name in errors) into dir without booting it, and returns the entry's path; an
  // entry already there is kept. Throws std::runtime_error naming the problem: not a bzImage, a payload
  // passvm does not unpack, a directory it cannot write.
  static std::string add(const std::string& dir, std::span<const uint8_t> bzimage, const std::string& name);

  // Streams a cached kernel's bytes to write(paddr, bytes) and returns its layout; nullopt on a miss
  // (or an unreadable or damaged entry, which is then removed). on_layout sees the layout before anything
  // is written and may throw to refuse it. Whole pages of zeros are neither stored nor written: the
  // destination must hold zeros where the kernel goes, as fresh guest RAM does.
  std::optional<VmlinuxLayout> load(const VmlinuxWriter::Write& write, const VmlinuxWriter::OnLayout& on_layout);
  // The same, reading each record straight into dest(paddr, length) when that gives memory (guest RAM),
  // which saves a copy of the whole kernel; a nullptr from dest falls back to write.
  using Destination = VmlinuxWriter::Destination;
  std::optional<VmlinuxLayout> load(const VmlinuxWriter::Write& write, const VmlinuxWriter::OnLayout& on_layout,
                                    const Destination& dest);

  // Recording while a kernel is unpacked: every placed piece, then commit() with the final layout.
  // Any I/O failure silently abandons the recording.
  void record(uint64_t paddr, std::span<const uint8_t> bytes);
  void commit(const VmlinuxLayout& layout);
  ~KernelCache();

  // Whether a file in a cache directory is an entry (as entry names are made; temporary files are not).
  static bool is_entry(const std::string& file_name);
  // Whether it is a note of a kernel file's hash (the file index).
  static bool is_index(const std::string& file_name);
  // Whether it is an entry or index still being written (or left by a passvm killed while writing it).
  static bool is_temporary(const std::string& file_name);

  // The entry's file in the own directory ("" without one).
  const std::string& path() const { return path_; }
  // Where the last successful load() read from.
  const std::string& loaded_from() const { return loaded_from_; }

 private:
  KernelCache(CacheDirs dirs, KernelImage&& bzimage);
  std::optional<VmlinuxLayout> load_file(const std::string& path, bool own, const VmlinuxWriter::Write& write,
                                         const VmlinuxWriter::OnLayout& on_layout, const Destination& dest);
  void abandon();
  void record_bytes(uint64_t paddr, std::span<const uint8_t> bytes);
  // Removes the temporary files a passvm killed while writing left (an hour old); with least_used_too,
  // also the least recently used entries and indexes beyond what the cache keeps. One directory listing.
  void prune(bool least_used_too);
  std::string index_path(const FileIdentity& file) const;
  std::string indexed_name(const FileIdentity& file) const;  // "" when the index has nothing valid
  void write_index(const FileIdentity& file, const std::string& name) const;

  std::string dir_, path_, shared_path_, tmp_path_, loaded_from_;
  int tmp_fd_ = -1;
  bool failed_ = false;
  bool hash_from_index_ = false;
};

}  // namespace passvm::boot
