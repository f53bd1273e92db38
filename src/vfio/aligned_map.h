// vfio: mmap of a device region at a host address the kernel can back with large pages.
//
// A BAR mapped at whatever address mmap picks gets 4 KiB host page-table entries, and
// then so does the guest's nested mapping of it: a 32 GiB BAR is 8 million of them. Where
// the host address is aligned like the guest address (the BAR's base is aligned to its
// size), the kernel can use 2 MiB or 1 GiB entries for the device's memory (vfio-pci
// does, since Linux 6.12) and KVM can mirror them. So a mapping is placed at an address
// congruent to `phase` (the area's offset inside its BAR) modulo its alignment: the
// largest power of two not above its size, capped at 1 GiB.
//
// Lifetime: the result is an ordinary shared mapping of `size` bytes; munmap it.
#pragma once

#include <cstdint>

namespace passvm::vfio {

// The alignment map_aligned() uses for a mapping of `size` bytes.
uint64_t mapping_alignment(uint64_t size);

// mmap(fd, offset, size, prot, MAP_SHARED) at an address a with a % align == phase % align.
// Returns MAP_FAILED (errno set) on failure, as mmap does.
void* map_aligned(int fd, uint64_t offset, uint64_t size, int prot, uint64_t phase);

}  // namespace passvm::vfio
