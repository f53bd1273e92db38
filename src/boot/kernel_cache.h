// boot/kernel_cache.h: unpacked kernels kept between boots.
//
// Unpacking a distribution kernel's xz payload costs a second of CPU on a
// fast host (and far more in a nested or emulated one): that is most of
// passvm's start-up time. The unpacked segments only depend on the bzImage's
// bytes, so passvm keeps them in a cache file keyed by a hash of the bzImage
// and streams them straight into guest RAM on the next boot.
//
// Where: $PASSVM_CACHE_DIR, else $XDG_CACHE_HOME/passvm, else ~/.cache/passvm;
// PASSVM_CACHE_DIR=off disables it. The newest few kernels are kept. A file
// that is damaged or half-written is ignored and replaced; the cache is never
// needed for a boot to work.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "boot/vmlinux.h"

namespace passvm::boot {

class KernelCache {
 public:
  // The cache directory from the environment, or "" when disabled or there is no home.
  static std::string default_dir();

  // dir "" disables the cache: lookups miss, recording does nothing.
  KernelCache(std::string dir, std::span<const uint8_t> bzimage);

  // Streams a cached kernel's bytes to write(paddr, bytes) and returns its layout; nullopt on a miss
  // (or an unreadable or damaged entry, which is then removed). on_layout sees the layout before anything
  // is written and may throw to refuse it.
  std::optional<VmlinuxLayout> load(const VmlinuxWriter::Write& write, const VmlinuxWriter::OnLayout& on_layout);

  // Recording while a kernel is unpacked: every placed piece, then commit() with the final layout.
  // Any I/O failure silently abandons the recording.
  void record(uint64_t paddr, std::span<const uint8_t> bytes);
  void commit(const VmlinuxLayout& layout);
  ~KernelCache();

  const std::string& path() const { return path_; }

 private:
  void abandon();
  void prune();

  std::string dir_, path_, tmp_path_;
  int tmp_fd_ = -1;
  bool failed_ = false;
};

}  // namespace passvm::boot
