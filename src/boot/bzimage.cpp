#include "boot/bzimage.h"

#include <fmt/format.h>

#include <cstring>
#include <stdexcept>

#include "boot/bytes.h"

namespace passvm::boot {

namespace {

std::string guess_format(std::span<const uint8_t> image) {
  if (image.size() >= 4 && image[0] == 0x7f && image[1] == 'E' && image[2] == 'L' && image[3] == 'F')
    return " (it is an ELF file, probably vmlinux: pass arch/x86/boot/bzImage or /boot/vmlinuz-* instead)";
  if (image.size() >= 2 && image[0] == 0x1f && image[1] == 0x8b) return " (it is gzip-compressed: decompress it first)";
  return "";
}

}  // namespace

SetupHeader parse_setup_header(std::span<const uint8_t> image, const std::string& what) {
  return parse_setup_header(image, image.size(), what);
}

SetupHeader parse_setup_header(std::span<const uint8_t> image, uint64_t file_size, const std::string& what) {
  constexpr size_t kMinSize = 0x268;  // through init_size and handover_offset (protocol 2.11)
  if (image.size() < kMinSize)
    throw std::runtime_error(fmt::format("{} is not a Linux bzImage: only {} bytes{}", what, file_size,
                                         guess_format(image)));
  if (load<uint32_t>(image, 0x202) != kHdrSMagic)
    throw std::runtime_error(
        fmt::format("{} is not a Linux bzImage: no \"HdrS\" setup header signature{}", what, guess_format(image)));
  SetupHeader h;
  h.version = load<uint16_t>(image, 0x206);
  if (h.version < kMinProtocol)
    throw std::runtime_error(fmt::format(
        "{} uses Linux boot protocol {}.{:02}, passvm needs 2.12 or newer (Linux 3.8+): use a newer kernel", what,
        h.version >> 8, h.version & 0xff));
  h.setup_sects = load<uint8_t>(image, 0x1f1);
  h.loadflags = load<uint8_t>(image, 0x211);
  h.initrd_addr_max = load<uint32_t>(image, 0x22c);
  h.kernel_alignment = load<uint32_t>(image, 0x230);
  h.relocatable_kernel = load<uint8_t>(image, 0x234);
  h.xloadflags = load<uint16_t>(image, 0x236);
  h.cmdline_size = load<uint32_t>(image, 0x238);
  h.pref_address = load<uint64_t>(image, 0x258);
  h.init_size = load<uint32_t>(image, 0x260);
  if (!(h.xloadflags & kXlfKernel64))
    throw std::runtime_error(fmt::format(
        "{} has no 64-bit entry point (XLF_KERNEL_64 not set): passvm boots x86-64 kernels only", what));
  if (!(h.loadflags & kLoadedHigh))
    throw std::runtime_error(fmt::format("{} is a zImage that loads below 1 MiB: passvm needs a bzImage", what));
  h.header_end = 0x202 + load<uint8_t>(image, 0x201);
  if (h.header_end > image.size() || h.header_end < 0x268)
    throw std::runtime_error(fmt::format("{}: setup header length {:#x} is corrupt", what, h.header_end));
  const size_t sects = h.setup_sects == 0 ? 4 : h.setup_sects;  // 0 means 4, for historical reasons
  h.kernel_offset = (sects + 1) * 512;
  if (h.kernel_offset >= file_size)
    throw std::runtime_error(fmt::format("{} is truncated: the setup part ({} bytes) is all there is", what,
                                         h.kernel_offset));
  h.kernel_size = static_cast<size_t>(file_size - h.kernel_offset);
  if (h.kernel_alignment != 0 && (h.kernel_alignment & (h.kernel_alignment - 1)) != 0)
    throw std::runtime_error(
        fmt::format("{}: kernel_alignment {:#x} is not a power of two", what, h.kernel_alignment));
  return h;
}

}  // namespace passvm::boot
