// boot/bzimage.h: reading the setup header of a Linux bzImage.
//
// A bzImage is a real-mode setup part (setup_sects + 1 sectors of 512 bytes,
// with the setup header at 0x1f1) followed by the protected-mode kernel. The
// header says where the kernel wants to be loaded, how much room it needs to
// decompress itself, where an initrd may go and how long the command line may
// be. passvm needs boot protocol 2.12 or newer with a 64-bit entry point.
#pragma once

#include <cstdint>
#include <span>
#include <string>

namespace passvm::boot {

// Offsets into the bzImage (and into the zero page, which holds a copy of the header).
inline constexpr size_t kSetupHeaderOffset = 0x1f1;
inline constexpr uint32_t kHdrSMagic = 0x53726448;  // "HdrS"
inline constexpr uint16_t kMinProtocol = 0x020c;    // 2.12: xloadflags
inline constexpr uint16_t kXlfKernel64 = 1u << 0;
inline constexpr uint16_t kXlfCanBeLoadedAbove4G = 1u << 1;
inline constexpr uint8_t kLoadedHigh = 1u << 0;
inline constexpr uint64_t kDefaultLoadAddr = 16ull << 20;

struct SetupHeader {
  uint8_t setup_sects = 0;
  uint16_t version = 0;  // 0x020f is 2.15
  uint8_t loadflags = 0;
  uint32_t initrd_addr_max = 0;
  uint32_t kernel_alignment = 0;
  uint8_t relocatable_kernel = 0;
  uint16_t xloadflags = 0;
  uint32_t cmdline_size = 0;
  uint64_t pref_address = 0;
  uint32_t init_size = 0;
  // Where the setup header ends in the file (0x202 + the jump byte at 0x201): bytes
  // [kSetupHeaderOffset, header_end) are copied into the zero page.
  size_t header_end = 0;
  // The protected-mode kernel: [kernel_offset, file end).
  size_t kernel_offset = 0;
  size_t kernel_size = 0;
};

// Parses and validates the header. `what` names the file in error messages. Throws std::runtime_error
// saying what is wrong and what to pass instead (a vmlinux ELF, a compressed file, an old kernel...).
SetupHeader parse_setup_header(std::span<const uint8_t> image, const std::string& what);
// The same from the file's first bytes (at least through the setup header) and its size.
SetupHeader parse_setup_header(std::span<const uint8_t> head, uint64_t file_size, const std::string& what);

}  // namespace passvm::boot
