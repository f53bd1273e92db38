#include "boot/vmlinux.h"

#include <elf.h>
#include <fmt/format.h>
#include <lzma.h>
#include <zlib.h>

#include <cstring>
#include <stdexcept>

namespace passvm::boot {

namespace {

constexpr uint64_t kMaxUnpacked = 512ull << 20;  // no kernel image comes close; bounds a corrupt size field

template <typename T>
T load(std::span<const uint8_t> b, size_t off) {
  T v{};
  if (off + sizeof v > b.size()) throw std::runtime_error("truncated");
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

std::vector<uint8_t> unxz(std::span<const uint8_t> in, size_t size_hint) {
  lzma_stream s = LZMA_STREAM_INIT;
  if (lzma_stream_decoder(&s, UINT64_MAX, 0) != LZMA_OK) throw std::runtime_error("cannot start the xz decoder");
  std::vector<uint8_t> out(size_hint);
  s.next_in = in.data();
  s.avail_in = in.size();
  s.next_out = out.data();
  s.avail_out = out.size();
  lzma_ret r;
  for (;;) {
    r = lzma_code(&s, LZMA_FINISH);
    if (r != LZMA_OK) break;
    if (s.avail_out == 0) {  // the size hint was short: grow
      size_t done = out.size();
      if (done * 2 > kMaxUnpacked) {
        r = LZMA_MEMLIMIT_ERROR;
        break;
      }
      out.resize(done * 2);
      s.next_out = out.data() + done;
      s.avail_out = out.size() - done;
    }
  }
  size_t produced = out.size() - s.avail_out;
  lzma_end(&s);
  if (r != LZMA_STREAM_END) throw std::runtime_error(fmt::format("xz payload is corrupt (liblzma error {})", static_cast<int>(r)));
  out.resize(produced);
  return out;
}

std::vector<uint8_t> gunzip(std::span<const uint8_t> in, size_t size_hint) {
  z_stream s{};
  if (inflateInit2(&s, 16 + MAX_WBITS) != Z_OK) throw std::runtime_error("cannot start the gzip decoder");
  std::vector<uint8_t> out(size_hint);
  s.next_in = const_cast<Bytef*>(in.data());
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = out.data();
  s.avail_out = static_cast<uInt>(out.size());
  int r = inflate(&s, Z_FINISH);
  size_t produced = s.total_out;
  inflateEnd(&s);
  if (r != Z_STREAM_END) throw std::runtime_error(fmt::format("gzip payload is corrupt or larger than it says (zlib error {})", r));
  out.resize(produced);
  return out;
}

}  // namespace

std::string payload_format(std::span<const uint8_t> p) {
  auto starts = [&](std::initializer_list<uint8_t> magic) {
    return p.size() >= magic.size() && std::equal(magic.begin(), magic.end(), p.begin());
  };
  if (starts({0xfd, '7', 'z', 'X', 'Z', 0x00})) return "xz";
  if (starts({0x1f, 0x8b})) return "gzip";
  if (starts({0x28, 0xb5, 0x2f, 0xfd})) return "zstd";
  if (starts({0x04, 0x22, 0x4d, 0x18}) || starts({0x02, 0x21, 0x4c, 0x18})) return "lz4";
  if (starts({'B', 'Z', 'h'})) return "bzip2";
  if (starts({0x89, 'L', 'Z', 'O'})) return "lzo";
  if (starts({0x5d, 0x00})) return "lzma";
  if (starts({0x7f, 'E', 'L', 'F'})) return "uncompressed ELF";
  return "unknown";
}

Vmlinux parse_vmlinux(std::vector<uint8_t> elf, const std::string& what) {
  std::span<const uint8_t> b(elf);
  auto bad = [&](const std::string& why) { return std::runtime_error(fmt::format("{}: {}", what, why)); };
  if (b.size() < sizeof(Elf64_Ehdr) || std::memcmp(b.data(), ELFMAG, SELFMAG) != 0) throw bad("not an ELF file");
  Elf64_Ehdr eh = load<Elf64_Ehdr>(b, 0);
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB || eh.e_machine != EM_X86_64 ||
      eh.e_type != ET_EXEC)
    throw bad("not an x86-64 ELF executable");
  if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 ||
      eh.e_phoff > b.size() || uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr) > b.size() - eh.e_phoff)
    throw bad("program headers out of bounds");
  Vmlinux v;
  bool entry_loaded = false;
  for (unsigned i = 0; i < eh.e_phnum; i++) {
    auto ph = load<Elf64_Phdr>(b, eh.e_phoff + i * sizeof(Elf64_Phdr));
    if (ph.p_type != PT_LOAD) continue;
    if (ph.p_offset > b.size() || ph.p_filesz > b.size() - ph.p_offset || ph.p_filesz > ph.p_memsz ||
        ph.p_memsz > kMaxUnpacked || ph.p_paddr > (1ull << 40))
      throw bad(fmt::format("segment {} is out of bounds", i));
    v.segments.push_back({ph.p_paddr, ph.p_offset, ph.p_filesz, ph.p_memsz});
    if (eh.e_entry >= ph.p_paddr && eh.e_entry < ph.p_paddr + ph.p_memsz) entry_loaded = true;
  }
  if (v.segments.empty()) throw bad("no loadable segment");
  if (!entry_loaded) throw bad(fmt::format("entry point {:#x} is not in a loaded segment", eh.e_entry));
  v.entry = eh.e_entry;
  v.image = std::move(elf);
  return v;
}

std::optional<Vmlinux> unpack_bzimage(std::span<const uint8_t> bzimage, const SetupHeader& h, std::string* why) {
  if (h.version < 0x0208) {
    *why = "boot protocol before 2.08 has no payload fields";
    return std::nullopt;
  }
  const uint32_t offset = load<uint32_t>(bzimage, 0x248);
  const uint32_t length = load<uint32_t>(bzimage, 0x24c);
  if (length == 0) {
    *why = "it has no payload fields";
    return std::nullopt;
  }
  if (length < 8 || h.kernel_offset + offset > bzimage.size() || length > bzimage.size() - h.kernel_offset - offset)
    throw std::runtime_error("the bzImage's payload_offset/payload_length point outside the file: it is damaged");
  auto payload = bzimage.subspan(h.kernel_offset + offset, length);
  // The kernel build appends the unpacked size as 4 little-endian bytes.
  uint64_t size = load<uint32_t>(payload, payload.size() - 4);
  if (size == 0 || size > kMaxUnpacked) size = 64ull << 20;
  std::string format = payload_format(payload);
  std::vector<uint8_t> elf;
  if (format == "xz") {
    elf = unxz(payload, size);
  } else if (format == "gzip") {
    elf = gunzip(payload, size);
  } else if (format == "uncompressed ELF") {
    elf.assign(payload.begin(), payload.end() - 4);
  } else {
    *why = fmt::format("its payload is {}-compressed", format);
    return std::nullopt;
  }
  return parse_vmlinux(std::move(elf), "the kernel inside the bzImage");
}

}  // namespace passvm::boot
