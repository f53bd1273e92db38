// boot/test_image.h: synthetic bzImages for the unit tests.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace passvm::boot::testing {

struct ImageSpec {
  uint8_t setup_sects = 4;
  uint16_t version = 0x020f;
  uint8_t loadflags = 0x01;
  uint32_t initrd_addr_max = 0x7fffffff;
  uint32_t kernel_alignment = 0x200000;
  uint8_t relocatable = 1;
  uint16_t xloadflags = 0x3;
  uint32_t cmdline_size = 2047;
  uint64_t pref_address = 0x1000000;
  uint32_t init_size = 0x400000;
  size_t kernel_bytes = 0x3000;
};

template <typename T>
void put(std::vector<uint8_t>& img, size_t off, T v) {
  uint8_t bytes[sizeof v];
  std::memcpy(bytes, &v, sizeof v);
  for (size_t i = 0; i < sizeof v; i++) img.at(off + i) = bytes[i];
}

// Protected-mode bytes are a counting pattern so that the tests can check what landed where.
inline std::vector<uint8_t> make_bzimage(const ImageSpec& s) {
  size_t setup = (static_cast<size_t>(s.setup_sects == 0 ? 4 : s.setup_sects) + 1) * 512;
  std::vector<uint8_t> img(setup + s.kernel_bytes, 0);
  put<uint8_t>(img, 0x1f1, s.setup_sects);
  put<uint16_t>(img, 0x1fe, 0xaa55);
  put<uint8_t>(img, 0x200, 0xeb);
  put<uint8_t>(img, 0x201, 0x6a);  // header ends at 0x26c
  put<uint32_t>(img, 0x202, 0x53726448);
  put<uint16_t>(img, 0x206, s.version);
  put<uint8_t>(img, 0x211, s.loadflags);
  put<uint32_t>(img, 0x22c, s.initrd_addr_max);
  put<uint32_t>(img, 0x230, s.kernel_alignment);
  put<uint8_t>(img, 0x234, s.relocatable);
  put<uint16_t>(img, 0x236, s.xloadflags);
  put<uint32_t>(img, 0x238, s.cmdline_size);
  put<uint64_t>(img, 0x258, s.pref_address);
  put<uint32_t>(img, 0x260, s.init_size);
  for (size_t i = 0; i < s.kernel_bytes; i++) img[setup + i] = static_cast<uint8_t>(i * 7 + 1);
  return img;
}

}  // namespace passvm::boot::testing
