#include "boot/vmlinux.h"

#include <elf.h>
#include <fmt/format.h>
#include <lzma.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "boot/bytes.h"

namespace passvm::boot {

namespace {

constexpr uint64_t kMaxUnpacked = 512ull << 20;  // no kernel image comes close; bounds a corrupt image
constexpr size_t kHeadBytes = 64 * 1024;          // the ELF and program headers must be in here
constexpr size_t kChunk = 1 << 20;

// What the xz decoder may allocate. The dictionary size in the stream decides it: a kernel's is 32 MiB at
// most (scripts/xz_wrap.sh), and an image 79 KB long could otherwise ask for 4 GiB.
constexpr uint64_t kXzMemLimit = 128ull << 20;

void unxz(std::span<const uint8_t> in, VmlinuxWriter& out) {
  lzma_stream s = LZMA_STREAM_INIT;
  if (lzma_stream_decoder(&s, kXzMemLimit, 0) != LZMA_OK) throw std::runtime_error("cannot start the xz decoder");
  s.next_in = in.data();
  s.avail_in = in.size();
  lzma_ret r = LZMA_OK;
  try {
    while (r == LZMA_OK) {
      std::span<uint8_t> w = out.window();
      s.next_out = w.data();
      s.avail_out = w.size();
      r = lzma_code(&s, LZMA_FINISH);
      out.produced(w.size() - s.avail_out);
    }
  } catch (...) {
    lzma_end(&s);
    throw;
  }
  lzma_end(&s);
  if (r == LZMA_MEMLIMIT_ERROR)
    throw std::runtime_error(fmt::format("the kernel's xz payload asks for more than {} MiB of memory to unpack (its "
                                         "dictionary size): no kernel needs that; is this image what it says?",
                                         kXzMemLimit >> 20));
  if (r != LZMA_STREAM_END)
    throw std::runtime_error(fmt::format("the kernel's xz payload is corrupt (liblzma error {})", static_cast<int>(r)));
}

void gunzip(std::span<const uint8_t> in, VmlinuxWriter& out) {
  z_stream s{};
  if (inflateInit2(&s, 16 + MAX_WBITS) != Z_OK) throw std::runtime_error("cannot start the gzip decoder");
  s.next_in = const_cast<Bytef*>(in.data());
  s.avail_in = static_cast<uInt>(in.size());
  int r = Z_OK;
  try {
    while (r == Z_OK) {
      std::span<uint8_t> w = out.window();
      s.next_out = w.data();
      s.avail_out = static_cast<uInt>(w.size());
      r = inflate(&s, Z_NO_FLUSH);
      out.produced(w.size() - s.avail_out);
      if (r == Z_BUF_ERROR && s.avail_in != 0) r = Z_OK;
    }
  } catch (...) {
    inflateEnd(&s);
    throw;
  }
  inflateEnd(&s);
  if (r != Z_STREAM_END) throw std::runtime_error(fmt::format("the kernel's gzip payload is corrupt (zlib error {})", r));
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

VmlinuxLayout parse_vmlinux_headers(std::span<const uint8_t> b, const std::string& what) {
  auto bad = [&](const std::string& why) { return std::runtime_error(fmt::format("{}: {}", what, why)); };
  if (b.size() < sizeof(Elf64_Ehdr) || std::memcmp(b.data(), ELFMAG, SELFMAG) != 0) throw bad("not an ELF file");
  auto eh = load<Elf64_Ehdr>(b, 0);
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB || eh.e_machine != EM_X86_64 ||
      eh.e_type != ET_EXEC)
    throw bad("not an x86-64 ELF executable");
  if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phoff > b.size() ||
      uint64_t{eh.e_phnum} * sizeof(Elf64_Phdr) > b.size() - eh.e_phoff)
    throw bad("program headers out of bounds");
  VmlinuxLayout v;
  bool entry_loaded = false;
  uint64_t total = 0;
  for (unsigned i = 0; i < eh.e_phnum; i++) {
    auto ph = load<Elf64_Phdr>(b, eh.e_phoff + i * sizeof(Elf64_Phdr));
    if (ph.p_type != PT_LOAD) continue;
    if (ph.p_offset > kMaxUnpacked || ph.p_filesz > kMaxUnpacked - ph.p_offset || ph.p_filesz > ph.p_memsz ||
        ph.p_memsz > kMaxUnpacked || ph.p_paddr > (1ull << 40))
      throw bad(fmt::format("segment {} is out of bounds", i));
    // Each segment is written once: many segments over the same bytes would make a small file write
    // without end (into guest RAM and the kernel cache).
    total += ph.p_memsz;
    if (total > kMaxUnpacked) throw bad("its segments add up to more than any kernel needs");
    for (const auto& other : v.segments)
      if (ph.p_paddr < other.paddr + other.mem_size && other.paddr < ph.p_paddr + ph.p_memsz)
        throw bad(fmt::format("segment {} overlaps another in memory", i));
    v.segments.push_back({ph.p_paddr, ph.p_offset, ph.p_filesz, ph.p_memsz});
    if (eh.e_entry >= ph.p_paddr && eh.e_entry < ph.p_paddr + ph.p_memsz) entry_loaded = true;
  }
  if (v.segments.empty()) throw bad("no loadable segment");
  if (!entry_loaded) throw bad(fmt::format("entry point {:#x} is not in a loaded segment", eh.e_entry));
  v.entry = eh.e_entry;
  return v;
}

void VmlinuxWriter::place_in(Destination dest, Write placed) {
  dest_ = std::move(dest);
  placed_ = std::move(placed);
}

std::span<uint8_t> VmlinuxWriter::window() {
  window_ = nullptr;
  if (scratch_.empty()) scratch_.resize(kChunk);
  std::span<uint8_t> scratch(scratch_);
  // Until the headers are parsed, exactly as many bytes as they may need.
  if (!parsed_) return scratch.first(kHeadBytes - head_.size());
  uint64_t next_start = UINT64_MAX;  // windows stop where a segment starts
  const ElfSegment* inside = nullptr;
  unsigned holders = 0;
  for (const auto& seg : layout_.segments) {
    if (received_ >= seg.file_offset && received_ < seg.file_offset + seg.file_size) {
      inside = &seg;
      holders++;
    } else if (seg.file_offset > received_) {
      next_start = std::min(next_start, seg.file_offset - received_);
    }
  }
  // In place only where one segment holds these bytes (overlapping segments get copies, as fed bytes do).
  if (dest_ && inside && holders == 1) {
    const uint64_t len = std::min({kWindow, inside->file_offset + inside->file_size - received_, next_start});
    const uint64_t paddr = inside->paddr + (received_ - inside->file_offset);
    if (uint8_t* p = dest_(paddr, len)) {
      window_ = p;
      window_paddr_ = paddr;
      return {p, len};
    }
  }
  return scratch.first(std::min<uint64_t>(scratch.size(), next_start));
}

void VmlinuxWriter::produced(size_t n) {
  if (!window_) {
    feed(std::span<const uint8_t>(scratch_).first(n));
    return;
  }
  // The segment bounds checked at parsing keep received_ under kMaxUnpacked here.
  if (n != 0 && placed_) placed_(window_paddr_, std::span<const uint8_t>(window_, n));
  received_ += n;
  window_ = nullptr;
}

void VmlinuxWriter::feed(std::span<const uint8_t> bytes) {
  if (bytes.empty()) return;
  if (received_ + bytes.size() > kMaxUnpacked) throw std::runtime_error("the unpacked kernel is implausibly large");
  if (!parsed_) {
    head_.insert(head_.end(), bytes.begin(), bytes.end());
    received_ += bytes.size();
    if (head_.size() >= kHeadBytes) take_head();
    return;
  }
  place(received_, bytes);
  received_ += bytes.size();
}

void VmlinuxWriter::take_head() {
  layout_ = parse_vmlinux_headers(head_, "the kernel inside the bzImage");
  on_layout_(layout_);
  parsed_ = true;
  place(0, head_);
  head_ = {};
}

void VmlinuxWriter::place(uint64_t offset, std::span<const uint8_t> bytes) {
  const uint64_t end = offset + bytes.size();
  for (const auto& seg : layout_.segments) {
    uint64_t from = std::max(offset, seg.file_offset), to = std::min(end, seg.file_offset + seg.file_size);
    if (from >= to) continue;
    write_(seg.paddr + (from - seg.file_offset), bytes.subspan(from - offset, to - from));
  }
}

VmlinuxLayout VmlinuxWriter::finish() {
  if (!parsed_) take_head();  // an image smaller than the header window
  for (const auto& seg : layout_.segments)
    if (seg.file_offset + seg.file_size > received_)
      throw std::runtime_error("the kernel inside the bzImage is truncated: a segment ends past the unpacked data");
  return layout_;
}

bool unpack_bzimage(std::span<const uint8_t> bzimage, const SetupHeader& h, VmlinuxWriter& out, std::string* why) {
  if (h.version < 0x0208) {
    *why = "boot protocol before 2.08 has no payload fields";
    return false;
  }
  const uint32_t offset = load<uint32_t>(bzimage, 0x248);
  const uint32_t length = load<uint32_t>(bzimage, 0x24c);
  if (length == 0) {
    *why = "it has no payload fields";
    return false;
  }
  if (length < 8 || h.kernel_offset + offset > bzimage.size() || length > bzimage.size() - h.kernel_offset - offset)
    throw std::runtime_error("the bzImage's payload_offset/payload_length point outside the file: it is damaged");
  // The kernel build appends the unpacked size as 4 bytes; the decoders find the end themselves.
  auto payload = bzimage.subspan(h.kernel_offset + offset, length);
  std::string format = payload_format(payload);
  if (format == "xz") {
    unxz(payload, out);
  } else if (format == "gzip") {
    gunzip(payload, out);
  } else if (format == "uncompressed ELF") {
    out.feed(payload.first(payload.size() - 4));
  } else {
    *why = fmt::format("its payload is {}-compressed", format);
    return false;
  }
  return true;
}

}  // namespace passvm::boot
