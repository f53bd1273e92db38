// boot/vmlinux.h: unpacking a bzImage on the host.
//
// A bzImage carries the real kernel (an ELF vmlinux) compressed, behind a
// small decompressor that the guest would otherwise run first. Inside a
// guest that decompressor is slow: it touches every page of a ~60 MiB image
// with the vCPU, under nested paging, before the kernel prints a line. passvm
// unpacks the payload natively instead (xz or gzip, the formats distribution
// kernels use) and places vmlinux's segments where the kernel is linked to
// run, then enters it at its 64-bit entry (startup_64) with the same zero
// page. What is lost is the decompressor's KASLR; a kernel whose payload
// cannot be unpacked here still boots the classic way.
//
// The unpacked ELF is streamed: its headers are parsed from the first bytes
// and every later byte is decoded straight into its place in guest RAM, so
// passvm never holds the whole image (its own memory stays small) and copies
// none of it.
#pragma once

#include <cstdint>
#include <functional>
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

struct VmlinuxLayout {
  std::vector<ElfSegment> segments;
  uint64_t entry = 0;  // physical address of startup_64
};

// The payload's compression, from its magic bytes: "xz", "gzip", or what it seems to be otherwise.
std::string payload_format(std::span<const uint8_t> payload);

// Parses an x86-64 ELF executable's PT_LOAD segments and entry from the file's first bytes (which must
// hold the ELF and program headers). Throws std::runtime_error when malformed.
VmlinuxLayout parse_vmlinux_headers(std::span<const uint8_t> head, const std::string& what);

// Receives the unpacked ELF in file order and places segment bytes with write(paddr, bytes). on_layout
// runs once, when the headers are known and before any segment byte is written: it may throw to refuse.
//
// A decoder either feeds it bytes, or asks it for a window() to decode into and says how much it
// produced(). With place_in(dest, placed), a window that lies inside a segment is dest's memory for
// those bytes (guest RAM): the decoder writes the kernel where it will run, with no copy, and placed
// hears of each range so written (write is then used only for what dest cannot hold, and for the first
// bytes, which carry the headers).
class VmlinuxWriter {
 public:
  using Write = std::function<void(uint64_t paddr, std::span<const uint8_t> bytes)>;
  using OnLayout = std::function<void(const VmlinuxLayout&)>;
  // Writable memory for [paddr, paddr + length), or nullptr when there is none in one piece.
  using Destination = std::function<uint8_t*(uint64_t paddr, uint64_t length)>;
  VmlinuxWriter(Write write, OnLayout on_layout) : write_(std::move(write)), on_layout_(std::move(on_layout)) {}

  void place_in(Destination dest, Write placed);

  void feed(std::span<const uint8_t> bytes);

  // Where the decoder's next bytes go (never empty), then how many it wrote there (n <= its size). A
  // window is valid until produced(); dest is asked for at most kWindow bytes at a time, so a caller
  // can cancel between windows.
  static constexpr uint64_t kWindow = 4ull << 20;
  std::span<uint8_t> window();
  void produced(size_t n);

  // Checks every segment's file bytes arrived; returns the layout. Zeroing [file_size, mem_size) is the caller's.
  VmlinuxLayout finish();

 private:
  void take_head();  // parses the held headers, then places the bytes held so far
  void place(uint64_t offset, std::span<const uint8_t> bytes);

  Write write_;
  OnLayout on_layout_;
  Destination dest_;
  Write placed_;
  std::vector<uint8_t> head_;     // held until the headers can be parsed
  std::vector<uint8_t> scratch_;  // windows that are not in place
  uint8_t* window_ = nullptr;     // the current window when it is in place, at window_paddr_
  uint64_t window_paddr_ = 0;
  bool parsed_ = false;
  uint64_t received_ = 0;
  VmlinuxLayout layout_;
};

// Unpacks the bzImage payload (protocol 2.08+: payload_offset/payload_length), streaming the ELF into
// out. Returns false, with the reason in *why, when this build cannot unpack it (another compression, no
// payload fields); throws std::runtime_error for a payload that claims a known format and is corrupt.
bool unpack_bzimage(std::span<const uint8_t> bzimage, const SetupHeader& h, VmlinuxWriter& out, std::string* why);

}  // namespace passvm::boot
