// boot/test_image.h: synthetic bzImages and vmlinux ELFs for the unit tests and the fuzz seeds.
#pragma once

#include <elf.h>
#include <lzma.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
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

// An x86-64 executable's ELF header, its program headers right after it.
inline Elf64_Ehdr elf_header(uint64_t entry, size_t phnum) {
  Elf64_Ehdr eh{};
  std::memcpy(eh.e_ident, ELFMAG, SELFMAG);
  eh.e_ident[EI_CLASS] = ELFCLASS64;
  eh.e_ident[EI_DATA] = ELFDATA2LSB;
  eh.e_type = ET_EXEC;
  eh.e_machine = EM_X86_64;
  eh.e_entry = entry;
  eh.e_phoff = sizeof(Elf64_Ehdr);
  eh.e_phentsize = sizeof(Elf64_Phdr);
  eh.e_phnum = static_cast<uint16_t>(phnum);
  return eh;
}

// A minimal x86-64 ELF executable: one PT_LOAD of `text` at paddr, memsz = text + bss, entry inside.
inline std::vector<uint8_t> make_elf(uint64_t paddr, const std::vector<uint8_t>& text, uint64_t bss, uint64_t entry) {
  Elf64_Ehdr eh = elf_header(entry, 1);
  Elf64_Phdr ph{};
  ph.p_type = PT_LOAD;
  ph.p_offset = sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr);
  ph.p_paddr = paddr;
  ph.p_vaddr = 0xffffffff80000000ull + paddr;
  ph.p_filesz = text.size();
  ph.p_memsz = text.size() + bss;
  std::vector<uint8_t> elf;
  auto append = [&elf](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    elf.insert(elf.end(), b, b + n);
  };
  append(&eh, sizeof eh);
  append(&ph, sizeof ph);
  elf.insert(elf.end(), text.begin(), text.end());
  return elf;
}

// An ELF executable shaped like a real vmlinux: several PT_LOADs at file offsets of their own, with
// filler bytes (0xa5) in the gaps between them, which belong to no segment.
struct ElfPiece {
  uint64_t paddr;
  uint64_t file_offset;  // past the headers, increasing
  std::vector<uint8_t> bytes;
};
inline std::vector<uint8_t> make_elf_segments(const std::vector<ElfPiece>& pieces, uint64_t entry) {
  Elf64_Ehdr eh = elf_header(entry, pieces.size());
  std::vector<uint8_t> elf(sizeof eh + pieces.size() * sizeof(Elf64_Phdr), 0);
  std::memcpy(elf.data(), &eh, sizeof eh);
  for (size_t i = 0; i < pieces.size(); i++) {
    Elf64_Phdr ph{};
    ph.p_type = PT_LOAD;
    ph.p_offset = pieces[i].file_offset;
    ph.p_paddr = pieces[i].paddr;
    ph.p_vaddr = 0xffffffff80000000ull + pieces[i].paddr;
    ph.p_filesz = ph.p_memsz = pieces[i].bytes.size();
    std::memcpy(elf.data() + sizeof eh + i * sizeof ph, &ph, sizeof ph);
    if (elf.size() > pieces[i].file_offset) throw std::logic_error("ElfPiece file offsets must increase");
    elf.resize(pieces[i].file_offset, 0xa5);
    elf.insert(elf.end(), pieces[i].bytes.begin(), pieces[i].bytes.end());
  }
  elf.resize(elf.size() + 4096, 0xa5);  // trailing bytes of no segment, as a vmlinux has
  return elf;
}

inline std::vector<uint8_t> xz(const std::vector<uint8_t>& in) {
  std::vector<uint8_t> out(in.size() + 4096);
  size_t pos = 0;
  if (lzma_easy_buffer_encode(6, LZMA_CHECK_CRC32, nullptr, in.data(), in.size(), out.data(), &pos, out.size()) !=
      LZMA_OK)
    throw std::runtime_error("xz encoding failed");
  out.resize(pos);
  return out;
}

inline std::vector<uint8_t> gz(const std::vector<uint8_t>& in) {
  z_stream s{};
  if (deflateInit2(&s, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw std::runtime_error("gzip encoder did not start");
  std::vector<uint8_t> out(deflateBound(&s, in.size()));
  s.next_in = const_cast<Bytef*>(in.data());
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = out.data();
  s.avail_out = static_cast<uInt>(out.size());
  int r = deflate(&s, Z_FINISH);
  out.resize(s.total_out);
  deflateEnd(&s);
  if (r != Z_STREAM_END) throw std::runtime_error("gzip encoding failed");
  return out;
}

// A bzImage whose protected-mode part is a payload (compressed ELF + 4-byte size), as the kernel build makes it.
inline std::vector<uint8_t> bzimage_with_payload(std::vector<uint8_t> payload, uint32_t unpacked_size,
                                                 ImageSpec spec = {}) {
  for (int i = 0; i < 4; i++) payload.push_back(static_cast<uint8_t>(unpacked_size >> (8 * i)));
  spec.kernel_bytes = 0x200 + payload.size();
  auto img = make_bzimage(spec);
  size_t pm = (static_cast<size_t>(spec.setup_sects == 0 ? 4 : spec.setup_sects) + 1) * 512;
  std::copy(payload.begin(), payload.end(), img.begin() + static_cast<long>(pm + 0x200));
  put<uint32_t>(img, 0x248, 0x200);
  put<uint32_t>(img, 0x24c, static_cast<uint32_t>(payload.size()));
  return img;
}

}  // namespace passvm::boot::testing
