#include "boot/vmlinux.h"

#include <gtest/gtest.h>
#include <lzma.h>

#include <algorithm>
#include <atomic>
#include <ctime>

#include <cstring>
#include <filesystem>
#include <unistd.h>
#include <stdexcept>

#include "boot/linux_boot.h"
#include "boot/test_image.h"
#include "memory/layout.h"

namespace passvm::boot {
namespace {

using testing::bzimage_with_payload;
using testing::gz;
using testing::make_elf;
using testing::xz;

std::vector<uint8_t> pattern(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; i++) v[i] = static_cast<uint8_t>(i * 13 + 5);
  return v;
}

TEST(Vmlinux, PayloadFormatsByMagic) {
  EXPECT_EQ(payload_format(std::vector<uint8_t>{0xfd, '7', 'z', 'X', 'Z', 0, 1}), "xz");
  EXPECT_EQ(payload_format(std::vector<uint8_t>{0x1f, 0x8b, 8}), "gzip");
  EXPECT_EQ(payload_format(std::vector<uint8_t>{0x28, 0xb5, 0x2f, 0xfd}), "zstd");
  EXPECT_EQ(payload_format(std::vector<uint8_t>{1, 2, 3}), "unknown");
}

TEST(Vmlinux, ParsesSegmentsAndEntry) {
  auto elf = make_elf(16 * layout::MiB, pattern(100), 50, 16 * layout::MiB + 10);
  VmlinuxLayout v = parse_vmlinux_headers(elf, "test");
  ASSERT_EQ(v.segments.size(), 1u);
  EXPECT_EQ(v.segments[0].paddr, 16 * layout::MiB);
  EXPECT_EQ(v.segments[0].file_size, 100u);
  EXPECT_EQ(v.segments[0].mem_size, 150u);
  EXPECT_EQ(v.entry, 16 * layout::MiB + 10);
}

TEST(Vmlinux, RejectsMalformedElf) {
  EXPECT_THROW(parse_vmlinux_headers(pattern(200), "t"), std::runtime_error);
  EXPECT_THROW(parse_vmlinux_headers(make_elf(16 * layout::MiB, pattern(100), 0, 0x1234), "t"), std::runtime_error);
  // Headers fine, but the stream ends before the segment's bytes do.
  auto truncated = make_elf(16 * layout::MiB, pattern(100), 0, 16 * layout::MiB);
  truncated.resize(truncated.size() - 10);
  VmlinuxWriter w([](uint64_t, std::span<const uint8_t>) {}, [](const VmlinuxLayout&) {});
  w.feed(truncated);
  EXPECT_THROW(w.finish(), std::runtime_error);
}

// Segments over the same guest memory (a small hostile file with many of them would make passvm write
// without end) are refused; neighbours that only touch are fine.
TEST(Vmlinux, RejectsOverlappingSegments) {
  const uint64_t base = 16 * layout::MiB;
  auto touching = testing::make_elf_segments({{base, 4096, pattern(4096)}, {base + 4096, 8192, pattern(4096)}}, base);
  EXPECT_EQ(parse_vmlinux_headers(touching, "t").segments.size(), 2u);
  auto overlapping =
      testing::make_elf_segments({{base, 4096, pattern(4096)}, {base + 4095, 8192, pattern(4096)}}, base);
  try {
    parse_vmlinux_headers(overlapping, "t");
    ADD_FAILURE() << "overlapping segments accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "t: segment 1 overlaps another in memory");
  }
}

TEST(Vmlinux, WriterPlacesSegmentBytesAcrossChunkBoundaries) {
  // Two segments; the stream arrives in odd-sized chunks so pieces straddle chunk and segment edges.
  auto text = pattern(200000);
  auto elf = make_elf(16 * layout::MiB, text, 0, 16 * layout::MiB);
  std::vector<uint8_t> guest(text.size(), 0);
  bool layout_seen = false;
  VmlinuxWriter w(
      [&](uint64_t paddr, std::span<const uint8_t> bytes) {
        ASSERT_TRUE(layout_seen);
        ASSERT_GE(paddr, 16 * layout::MiB);
        ASSERT_LE(paddr - 16 * layout::MiB + bytes.size(), guest.size());
        std::copy(bytes.begin(), bytes.end(), guest.begin() + static_cast<long>(paddr - 16 * layout::MiB));
      },
      [&](const VmlinuxLayout& l) {
        layout_seen = true;
        EXPECT_EQ(l.segments.size(), 1u);
      });
  for (size_t at = 0; at < elf.size(); at += 7777)
    w.feed(std::span<const uint8_t>(elf).subspan(at, std::min<size_t>(7777, elf.size() - at)));
  w.finish();
  EXPECT_EQ(guest, text);
}

// A vmlinux-like image: a segment that starts inside the header window, one longer than a window,
// one the destination cannot hold (so its bytes must come through write), with gaps between them.
std::vector<testing::ElfPiece> three_segments() {
  auto a = pattern(100000), b = pattern(VmlinuxWriter::kWindow + 300001), c = pattern(70000);
  std::reverse(b.begin(), b.end());
  return {{16 * layout::MiB, 0x1000, a}, {17 * layout::MiB, 0x30000, b}, {24 * layout::MiB, 0x900000, c}};
}

TEST(Vmlinux, WindowsPutSegmentBytesInPlaceAndNothingElse) {
  auto pieces = three_segments();
  auto elf = testing::make_elf_segments(pieces, 16 * layout::MiB + 0x40);
  const uint64_t base = 16 * layout::MiB;
  std::vector<uint8_t> guest(10 * layout::MiB, 0x5c);  // paddr 16-26 MiB; 0x5c where no segment goes
  uint64_t placed_bytes = 0, written_bytes = 0;
  VmlinuxWriter w(
      [&](uint64_t paddr, std::span<const uint8_t> bytes) {
        written_bytes += bytes.size();
        ASSERT_GE(paddr, base);
        ASSERT_LE(paddr - base + bytes.size(), guest.size());
        std::copy(bytes.begin(), bytes.end(), guest.begin() + static_cast<long>(paddr - base));
      },
      [](const VmlinuxLayout&) {});
  std::vector<std::pair<uint64_t, uint64_t>> asked;
  w.place_in(
      [&](uint64_t paddr, uint64_t length) -> uint8_t* {
        asked.emplace_back(paddr, length);
        if (paddr >= 24 * layout::MiB) return nullptr;  // the third segment is not in one piece
        return guest.data() + (paddr - base);
      },
      [&](uint64_t paddr, std::span<const uint8_t> bytes) {
        placed_bytes += bytes.size();
        // What placed hears of is exactly what the decoder wrote there.
        ASSERT_EQ(bytes.data(), guest.data() + (paddr - base));
      });
  // A decoder that writes less than it is offered, in uneven amounts.
  size_t at = 0, step = 1;
  while (at < elf.size()) {
    std::span<uint8_t> win = w.window();
    ASSERT_FALSE(win.empty());
    size_t n = std::min({win.size(), elf.size() - at, step});
    std::memcpy(win.data(), elf.data() + at, n);
    w.produced(n);
    at += n;
    step = step * 3 + 1001;
    if (step > 3 * layout::MiB) step = 1;
  }
  VmlinuxLayout l = w.finish();
  ASSERT_EQ(l.segments.size(), 3u);
  std::vector<uint8_t> expect(guest.size(), 0x5c);
  for (const auto& p : pieces) std::copy(p.bytes.begin(), p.bytes.end(), expect.begin() + (p.paddr - base));
  EXPECT_TRUE(guest == expect) << "a segment byte is wrong, or something landed outside the segments";
  // The first segment's bytes in the header window were copied; the rest of it and all of the second went
  // in place; the third, which the destination could not hold, was copied.
  const uint64_t in_head = 0x10000 - 0x1000;
  EXPECT_EQ(placed_bytes, pieces[0].bytes.size() - in_head + pieces[1].bytes.size());
  EXPECT_EQ(written_bytes, in_head + pieces[2].bytes.size());
  for (auto [paddr, length] : asked) EXPECT_LE(length, VmlinuxWriter::kWindow);
}

TEST(Vmlinux, UnpacksASegmentedKernelStraightIntoGuestRam) {
  auto pieces = three_segments();
  auto elf = testing::make_elf_segments(pieces, 16 * layout::MiB + 0x40);
  for (bool use_xz : {true, false}) {
    auto img = bzimage_with_payload(use_xz ? xz(elf) : gz(elf), static_cast<uint32_t>(elf.size()));
    GuestMemory mem(64 * layout::MiB, false);
    std::vector<uint8_t> junk(26 * layout::MiB - 16 * layout::MiB, 0xee);
    mem.write(16 * layout::MiB, junk);
    LinuxBoot b = load_linux_image(mem, img, {}, "", build_e820(mem), 0, "t", true);
    ASSERT_TRUE(b.unpacked_on_host) << b.unpack_note;
    std::vector<uint8_t> back(junk.size());
    mem.read(16 * layout::MiB, back);
    for (const auto& p : pieces) {
      auto at = back.begin() + static_cast<long>(p.paddr - 16 * layout::MiB);
      EXPECT_TRUE(std::equal(p.bytes.begin(), p.bytes.end(), at)) << std::hex << p.paddr;
      std::fill(at, at + static_cast<long>(p.bytes.size()), 0xee);
    }
    // Between the segments, guest RAM is as it was: the gaps' filler went nowhere.
    EXPECT_TRUE(std::all_of(back.begin(), back.end(), [](uint8_t v) { return v == 0xee; }));
  }
}

TEST(Vmlinux, OnLayoutCanRefuseBeforeAnythingIsWritten) {
  auto elf = make_elf(16 * layout::MiB, pattern(100000), 0, 16 * layout::MiB);
  bool written = false;
  VmlinuxWriter w([&](uint64_t, std::span<const uint8_t>) { written = true; },
                  [](const VmlinuxLayout&) { throw std::runtime_error("no room"); });
  EXPECT_THROW(w.feed(elf), std::runtime_error);
  EXPECT_FALSE(written);
}

TEST(Vmlinux, UnpacksXzAndGzipPayloadsAndLoadsThem) {
  const uint64_t paddr = 16 * layout::MiB;
  auto text = pattern(300000);
  auto elf = make_elf(paddr, text, 4096, paddr + 0x40);
  for (bool use_xz : {true, false}) {
    auto img = bzimage_with_payload(use_xz ? xz(elf) : gz(elf), static_cast<uint32_t>(elf.size()));
    ASSERT_NO_THROW(parse_setup_header(img, "t"));

    GuestMemory mem(64 * layout::MiB, false);
    std::vector<uint8_t> junk(4096, 0xee);
    mem.write(paddr + text.size(), junk);  // bss must come out zeroed
    LinuxBoot b = load_linux_image(mem, img, {}, "", build_e820(mem), 0, "t", true);
    EXPECT_TRUE(b.unpacked_on_host);
    EXPECT_EQ(b.entry.rip, paddr + 0x40);
    std::vector<uint8_t> back(text.size() + 4096);
    mem.read(paddr, back);
    EXPECT_TRUE(std::equal(text.begin(), text.end(), back.begin()));
    for (size_t i = text.size(); i < back.size(); i++) ASSERT_EQ(back[i], 0) << i;
  }
}

// An xz payload whose block header asks for a 4 GiB dictionary (one byte changed, and its CRC): refused
// by name, without allocating what it asks for.
TEST(Vmlinux, AnXzPayloadAskingForAHugeDictionaryIsRefused) {
  const uint64_t paddr = 16 * layout::MiB;
  auto packed = xz(make_elf(paddr, pattern(100000), 4096, paddr + 0x40));
  const size_t block = 12, header_size = (packed[block] + 1u) * 4u;
  size_t at = block + 2;  // past the header's size and flags: then its sizes, if given, as varints
  auto skip_varint = [&] {
    while (packed[at++] & 0x80) {
    }
  };
  if (packed[block + 1] & 0x40) skip_varint();
  if (packed[block + 1] & 0x80) skip_varint();
  ASSERT_EQ(packed[at], 0x21) << "LZMA2";
  ASSERT_EQ(packed[at + 1], 1) << "one byte of properties";
  packed[at + 2] = 40;  // the dictionary size: 4 GiB - 1
  uint32_t crc = lzma_crc32(&packed[block], header_size - 4, 0);
  std::memcpy(&packed[block + header_size - 4], &crc, 4);
  auto img = bzimage_with_payload(packed, 0);
  GuestMemory mem(64 * layout::MiB, false);
  try {
    load_linux_image(mem, img, {}, "", build_e820(mem), 0, "t", true);
    FAIL() << "unpacked a payload that asks for a 4 GiB dictionary";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("asks for more than 128 MiB of memory to unpack"), std::string::npos)
        << e.what();
  }
}

TEST(Vmlinux, SecondBootComesFromTheCacheWithTheSameGuestImage) {
  char tmpl[] = "/tmp/passvm-vmlinux-cache-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  const uint64_t paddr = 16 * layout::MiB;
  auto text = pattern(500000);
  auto img = bzimage_with_payload(xz(make_elf(paddr, text, 8192, paddr + 0x40)), 0);
  GuestMemory first(64 * layout::MiB, false), second(64 * layout::MiB, false);
  LinuxBoot a = load_linux_image(first, img, {}, "", build_e820(first), 0, "t", true, dir);
  LinuxBoot b = load_linux_image(second, img, {}, "", build_e820(second), 0, "t", true, dir);
  EXPECT_FALSE(a.from_cache);
  EXPECT_TRUE(b.from_cache);
  EXPECT_TRUE(b.unpacked_on_host);
  EXPECT_EQ(a.entry.rip, b.entry.rip);
  std::vector<uint8_t> x(text.size() + 8192), y(text.size() + 8192);
  first.read(paddr, x);
  second.read(paddr, y);
  EXPECT_EQ(x, y);
  std::filesystem::remove_all(dir);
}

TEST(Vmlinux, AKernelFileTheCacheKnowsNeedsOnlyItsHeader) {
  char tmpl[] = "/tmp/passvm-vmlinux-cache-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  const uint64_t paddr = 16 * layout::MiB;
  std::vector<uint8_t> text(64 * 1024);  // what xz cannot shrink, so the payload reaches past the first page
  uint32_t x = 1;
  for (auto& b : text) b = static_cast<uint8_t>((x = x * 1103515245 + 12345) >> 24);
  auto img = bzimage_with_payload(xz(make_elf(paddr, text, 8192, paddr + 0x40)), 0);
  ASSERT_GT(img.size(), 4 * KernelImage::kHeadSize);
  const int64_t hour_ago = (int64_t{time(nullptr)} - 3600) * 1000000000;
  const FileIdentity file{7, 42, img.size(), hour_ago, hour_ago};
  GuestMemory first(64 * layout::MiB, false), second(64 * layout::MiB, false);
  LinuxBoot a = load_linux_image(first, img, {}, "", build_e820(first), 0, "t", true, dir, nullptr, &file);
  // The same file again, but every byte past its first page unreadable garbage: were the payload used
  // (unpacked, or hashed), this boot would fail or miss.
  auto garbled = img;
  std::fill(garbled.begin() + KernelImage::kHeadSize, garbled.end(), uint8_t{0xa5});
  LinuxBoot b = load_linux_image(second, garbled, {}, "", build_e820(second), 0, "t", true, dir, nullptr, &file);
  EXPECT_FALSE(a.from_cache);
  EXPECT_TRUE(b.from_cache);
  std::vector<uint8_t> got_first(text.size()), got_second(text.size());
  first.read(paddr, got_first);
  second.read(paddr, got_second);
  EXPECT_EQ(got_first, text);
  EXPECT_EQ(got_second, text);
  // Without the file's identity the bytes are what there is to go by: garbage, which does not unpack.
  GuestMemory third(64 * layout::MiB, false);
  EXPECT_THROW(load_linux_image(third, garbled, {}, "", build_e820(third), 0, "t", true, dir), std::runtime_error);
  std::filesystem::remove_all(dir);
}

TEST(Vmlinux, UnknownCompressionFallsBackToGuestDecompressor) {
  auto img = bzimage_with_payload({0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4}, 100);
  SetupHeader h = parse_setup_header(img, "t");
  std::string why;
  VmlinuxWriter w([](uint64_t, std::span<const uint8_t>) {}, [](const VmlinuxLayout&) {});
  EXPECT_FALSE(unpack_bzimage(img, h, w, &why));
  EXPECT_NE(why.find("zstd"), std::string::npos);
  GuestMemory mem(64 * layout::MiB, false);
  LinuxBoot b = load_linux_image(mem, img, {}, "", build_e820(mem), 0, "t", true);
  EXPECT_FALSE(b.unpacked_on_host);
  EXPECT_EQ(b.entry.rip, b.kernel_addr + 0x200);
}

TEST(Vmlinux, CorruptPayloadIsAnError) {
  auto elf = make_elf(16 * layout::MiB, pattern(5000), 0, 16 * layout::MiB);
  auto packed = xz(elf);
  packed[packed.size() / 2] ^= 0xff;
  auto img = bzimage_with_payload(packed, static_cast<uint32_t>(elf.size()));
  SetupHeader h = parse_setup_header(img, "t");
  std::string why;
  VmlinuxWriter w([](uint64_t, std::span<const uint8_t>) {}, [](const VmlinuxLayout&) {});
  EXPECT_THROW(unpack_bzimage(img, h, w, &why), std::runtime_error);
}

TEST(Vmlinux, CacheAddAheadOfTimeMakesTheFirstBootAHitFromTheSharedDirectory) {
  namespace fs = std::filesystem;
  char tmpl[] = "/tmp/passvm-vmlinux-shared-XXXXXX";
  fs::path root = mkdtemp(tmpl);
  const uint64_t paddr = 16 * layout::MiB;
  auto text = pattern(400000);
  auto img = bzimage_with_payload(xz(make_elf(paddr, text, 4096, paddr + 0x40)), 0);
  const fs::path shared = root / "shared", own = root / "own";
  std::string path = KernelCache::add(shared.string(), img, "t");
  EXPECT_TRUE(fs::exists(path));
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::others_read, fs::perms::others_read);
  EXPECT_EQ(KernelCache::add(shared.string(), img, "t"), path);  // a second add keeps the entry

  // A user whose own cache is empty boots from the shared entry, and writes nothing of their own.
  GuestMemory mem(64 * layout::MiB, false);
  LinuxBoot b = load_linux_image(mem, img, {}, "", build_e820(mem), 0, "t", true, CacheDirs{own.string(), shared.string()});
  EXPECT_TRUE(b.from_cache);
  EXPECT_EQ(b.cache_file, path);
  EXPECT_EQ(b.entry.rip, paddr + 0x40);
  std::vector<uint8_t> back(text.size());
  mem.read(paddr, back);
  EXPECT_EQ(back, text);
  EXPECT_FALSE(fs::exists(own));

  // A shared directory others may write to could hold anything: it is not used.
  fs::permissions(shared, fs::perms::others_write, fs::perm_options::add);
  GuestMemory again(64 * layout::MiB, false);
  LinuxBoot c = load_linux_image(again, img, {}, "", build_e820(again), 0, "t", true, CacheDirs{"", shared.string()});
  EXPECT_FALSE(c.from_cache);
  EXPECT_TRUE(c.unpacked_on_host);
  fs::remove_all(root);
}

TEST(Vmlinux, CacheAddRefusesAKernelItCannotUnpackNamingWhy) {
  char tmpl[] = "/tmp/passvm-vmlinux-add-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  auto zstd = bzimage_with_payload({0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 4}, 100);
  try {
    KernelCache::add(dir, zstd, "bzImage-zstd");
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("zstd"), std::string::npos) << e.what();
  }
  EXPECT_THROW(KernelCache::add(dir, std::vector<uint8_t>(4096, 0), "not-a-kernel"), std::runtime_error);
  std::filesystem::remove_all(dir);
}

TEST(Vmlinux, ACancelledLoadStopsWithLoadCancelled) {
  const uint64_t paddr = 16 * layout::MiB;
  auto img = bzimage_with_payload(xz(make_elf(paddr, pattern(300000), 0, paddr)), 0);
  GuestMemory mem(64 * layout::MiB, false);
  std::atomic<bool> cancel{true};
  EXPECT_THROW(load_linux_image(mem, img, {}, "", build_e820(mem), 0, "t", true, {}, &cancel), LoadCancelled);
  cancel = false;
  EXPECT_TRUE(load_linux_image(mem, img, {}, "", build_e820(mem), 0, "t", true, {}, &cancel).unpacked_on_host);
}

}  // namespace
}  // namespace passvm::boot
