// boot/vmlinux.h: unpacking a bzImage on the host.
//
// A bzImage carries the real kernel (an ELF vmlinux) compressed, behind a
// small decompressor that the guest would otherwise run first. Inside a
// guest that decompressor is slow: it touches every page of a ~40 MiB image
// with the vCPU, under nested paging, before the kernel prints a line. passvm
// unpacks the payload natively instead (xz or gzip, the formats distribution
// kernels use) and places vmlinux's segments where the kernel is linked to
// run, then enters it at its 64-bit entry (startup_64) with the same zero
// page. What is lost is the decompressor's KASLR; a kernel whose payload
// cannot be unpacked here still boots the classic way.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "boot/bzimage.h"

namespace passvm::boot {

struct ElfSegment {
  uint64_t paddr;
  uint64_t file_offset;
  uint64_t file_size;
  uint64_t mem_size;
};

struct Vmlinux {
  std::vector<uint8_t> image;  // the whole ELF file
  std::vector<ElfSegment> segments;
  uint64_t entry = 0;  // physical address of startup_64
};

// The payload's compression, from its magic bytes: "xz", "gzip", or what it seems to be otherwise.
std::string payload_format(std::span<const uint8_t> payload);

// Unpacks the bzImage payload (protocol 2.08+: payload_offset/payload_length) and parses the ELF inside.
// Returns nullopt, with the reason in *why, when this build cannot unpack it (another compression, no
// payload fields); throws std::runtime_error for a payload that claims a known format and is corrupt.
std::optional<Vmlinux> unpack_bzimage(std::span<const uint8_t> bzimage, const SetupHeader& h, std::string* why);

// Parses an ELF64 x86-64 executable's PT_LOAD segments and entry. Throws std::runtime_error when malformed.
Vmlinux parse_vmlinux(std::vector<uint8_t> elf, const std::string& what);

}  // namespace passvm::boot
