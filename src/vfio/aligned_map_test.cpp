#include "vfio/aligned_map.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

namespace passvm::vfio {
namespace {

TEST(AlignedMap, AlignmentIsTheLargestPowerOfTwoUpTo1GiB) {
  EXPECT_EQ(mapping_alignment(4096), 4096u);
  EXPECT_EQ(mapping_alignment(100), 4096u);
  EXPECT_EQ(mapping_alignment(3 << 20), 2u << 20);
  EXPECT_EQ(mapping_alignment(64ull << 30), 1ull << 30);
}

// A memfd stands in for the device: what is written through the mapping lands at the right offset.
TEST(AlignedMap, MapsAtAnAddressCongruentToThePhase) {
  int fd = memfd_create("aligned-map-test", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 16 << 20), 0);
  for (uint64_t phase : {uint64_t{0}, uint64_t{0x3000}, uint64_t{5 << 20}}) {
    const uint64_t size = 4 << 20, offset = 8 << 20;
    void* p = map_aligned(fd, offset, size, PROT_READ | PROT_WRITE, phase);
    ASSERT_NE(p, MAP_FAILED) << strerror(errno);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % (4 << 20), phase % (4 << 20)) << phase;
    static_cast<uint8_t*>(p)[size - 1] = 0x5a;
    uint8_t back = 0;
    ASSERT_EQ(pread(fd, &back, 1, static_cast<off_t>(offset + size - 1)), 1);
    EXPECT_EQ(back, 0x5a);
    EXPECT_EQ(munmap(p, size), 0);
  }
  EXPECT_EQ(map_aligned(-1, 0, 4 << 20, PROT_READ, 0), MAP_FAILED) << "a bad fd fails as mmap does";
  close(fd);
}

}  // namespace
}  // namespace passvm::vfio
