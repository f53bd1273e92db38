// memory: guest RAM.
//
// Guest RAM is one memfd (so that it could be shared with another process, a
// vfio-user server say), mapped once into passvm and cut into guest-physical
// regions around the 32-bit PCI hole. KVM memory slots and IOMMU DMA mappings
// are made from regions(); device models and the boot loader reach guest RAM
// through host_address()/read()/write(), which refuse any range not wholly
// inside RAM, so a guest-supplied address can never reach passvm's own memory.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace passvm {

struct MemoryRegion {
  uint64_t gpa;
  uint64_t size;
  uint8_t* hva;
  uint64_t fd_offset;  // offset of this region inside the memfd
};

class GuestMemory {
 public:
  // Allocates `size` bytes of guest RAM and lays them out on the x86 map (layout.h).
  // Throws std::runtime_error with a user-facing message when the memory cannot be had.
  GuestMemory(uint64_t size, bool hugepages);
  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  const std::vector<MemoryRegion>& regions() const { return regions_; }
  uint64_t size() const { return size_; }
  int fd() const { return fd_; }

  // Allocates every page now, `threads` at a time (0: one per host CPU, at most 16), instead of at the
  // guest's first touch. Pinning for DMA allocates them anyway, one page after the other in one thread;
  // this does it in parallel first, and a host short of memory fails here with a clear message rather
  // than later. Returns the number of threads used; throws std::runtime_error on failure.
  unsigned populate(unsigned threads = 0) const;

  // Host pointer to [gpa, gpa+len) or nullptr if the range is not wholly inside one region.
  uint8_t* host_address(uint64_t gpa, uint64_t len) const;
  // Throw std::out_of_range if the range is not wholly inside RAM.
  void read(uint64_t gpa, std::span<uint8_t> out) const;
  void write(uint64_t gpa, std::span<const uint8_t> in) const;

 private:
  uint64_t size_;
  int fd_ = -1;
  uint8_t* base_ = nullptr;
  std::vector<MemoryRegion> regions_;
};

}  // namespace passvm
