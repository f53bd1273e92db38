#include "vfio/aligned_map.h"

#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cerrno>

namespace passvm::vfio {

uint64_t mapping_alignment(uint64_t size) {
  constexpr uint64_t kPage = 4096, kMax = 1ull << 30;
  return std::clamp<uint64_t>(std::bit_floor(std::max<uint64_t>(size, 1)), kPage, kMax);
}

void* map_aligned(int fd, uint64_t offset, uint64_t size, int prot, uint64_t phase) {
  const uint64_t align = mapping_alignment(size);
  if (align <= 4096) return mmap(nullptr, size, prot, MAP_SHARED, fd, static_cast<off_t>(offset));
  // Reserve room for any phase, place the mapping inside, give back the rest.
  const uint64_t span = size + 2 * align;
  void* r = mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) return MAP_FAILED;
  const auto start = reinterpret_cast<uintptr_t>(r);
  const uintptr_t at = ((start + align - 1) & ~(align - 1)) + (phase & (align - 1) & ~uint64_t{4095});
  void* p = mmap(reinterpret_cast<void*>(at), size, prot, MAP_SHARED | MAP_FIXED, fd, static_cast<off_t>(offset));
  if (p == MAP_FAILED) {
    int e = errno;
    munmap(r, span);
    errno = e;
    return MAP_FAILED;
  }
  if (at > start) munmap(r, at - start);
  if (start + span > at + size) munmap(reinterpret_cast<void*>(at + size), start + span - (at + size));
  return p;
}

}  // namespace passvm::vfio
