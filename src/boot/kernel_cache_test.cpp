#include "boot/kernel_cache.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>

namespace passvm::boot {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/passvm-cache-test-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

VmlinuxLayout sample_layout() {
  VmlinuxLayout l;
  l.entry = 0x1000040;
  l.segments = {{0x1000000, 0x1000, 300, 400}, {0x2000000, 0x2000, 5000, 8192}};
  return l;
}

// Records two segments' bytes the way the unpacker would, and commits.
void record_kernel(KernelCache& c, const std::map<uint64_t, std::vector<uint8_t>>& pieces) {
  for (const auto& [paddr, bytes] : pieces) c.record(paddr, bytes);
  c.commit(sample_layout());
}

std::map<uint64_t, std::vector<uint8_t>> sample_pieces() {
  std::vector<uint8_t> a(300), b(5000);
  for (size_t i = 0; i < a.size(); i++) a[i] = static_cast<uint8_t>(i * 3);
  for (size_t i = 0; i < b.size(); i++) b[i] = static_cast<uint8_t>(i * 7 + 1);
  return {{0x1000000, a}, {0x2000000, b}};
}

// Whether the entry for bzimage loads, or writes anything trying.
bool loads(const fs::path& dir, const std::vector<uint8_t>& bzimage) {
  bool wrote = false;
  KernelCache c(dir.string(), bzimage);
  bool hit = c.load([&](uint64_t, std::span<const uint8_t>) { wrote = true; }, [](const VmlinuxLayout&) {}).has_value();
  return hit || wrote;
}

TEST(KernelCache, MissThenRecordThenHitGivesTheSameBytes) {
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 9);
  auto pieces = sample_pieces();
  std::map<uint64_t, std::vector<uint8_t>> loaded;
  auto write = [&](uint64_t paddr, std::span<const uint8_t> bytes) {
    auto& v = loaded[paddr];
    v.insert(v.end(), bytes.begin(), bytes.end());
  };
  auto accept = [](const VmlinuxLayout&) {};
  {
    KernelCache c(dir.path.string(), bzimage);
    EXPECT_FALSE(c.load(write, accept).has_value());
    record_kernel(c, pieces);
  }
  KernelCache c(dir.path.string(), bzimage);
  auto layout = c.load(write, accept);
  ASSERT_TRUE(layout.has_value());
  EXPECT_EQ(layout->entry, 0x1000040u);
  ASSERT_EQ(layout->segments.size(), 2u);
  EXPECT_EQ(layout->segments[1].mem_size, 8192u);
  EXPECT_EQ(loaded, pieces);

  // Another bzImage is another entry.
  std::vector<uint8_t> other(1000, 8);
  KernelCache c2(dir.path.string(), other);
  EXPECT_FALSE(c2.load(write, accept).has_value());
}

TEST(KernelCache, DamagedOrUnfinishedEntriesAreIgnoredAndRemoved) {
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 9);
  std::string path;
  {
    KernelCache c(dir.path.string(), bzimage);
    record_kernel(c, sample_pieces());
    path = c.path();
  }
  fs::resize_file(path, fs::file_size(path) - 3);  // trailer cut: not a complete entry
  EXPECT_FALSE(loads(dir.path, bzimage));
  EXPECT_FALSE(fs::exists(path));

  // A recording that is abandoned (never committed) leaves nothing behind.
  {
    KernelCache r(dir.path.string(), bzimage);
    r.record(0x1000000, std::vector<uint8_t>(10, 1));
  }
  EXPECT_TRUE(fs::is_empty(dir.path));
}

TEST(KernelCache, RecordOutsideTheSegmentsIsADamagedEntry) {
  // on_layout approves the segments only: a record elsewhere (here below the first segment, where the
  // zero page and page tables live) would write guest memory nobody checked.
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 9);
  std::string path;
  {
    KernelCache c(dir.path.string(), bzimage);
    c.record(0x7000, std::vector<uint8_t>(16, 0xee));
    c.commit(sample_layout());
    path = c.path();
  }
  EXPECT_FALSE(loads(dir.path, bzimage));
  EXPECT_FALSE(fs::exists(path));

  // A segment that wraps around the address space passes a bounds check of its start and end.
  {
    KernelCache w(dir.path.string(), bzimage);
    VmlinuxLayout l;
    l.entry = 0;
    l.segments = {{0xfffffffffffff000, 0, 0, 0x2000}};
    w.record(0xfffffffffffff000, {});
    w.commit(l);
  }
  EXPECT_FALSE(loads(dir.path, bzimage));
}

TEST(KernelCache, RefusedLayoutWritesNothing) {
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 9);
  {
    KernelCache c(dir.path.string(), bzimage);
    record_kernel(c, sample_pieces());
  }
  bool wrote = false;
  KernelCache c(dir.path.string(), bzimage);
  EXPECT_THROW(c.load([&](uint64_t, std::span<const uint8_t>) { wrote = true; },
                      [](const VmlinuxLayout&) { throw std::runtime_error("too small a guest"); }),
               std::runtime_error);
  EXPECT_FALSE(wrote);
}

TEST(KernelCache, DisabledCacheNeverHitsNorWrites) {
  std::vector<uint8_t> bzimage(1000, 9);
  KernelCache c("", bzimage);
  c.record(0x1000000, std::vector<uint8_t>(10, 1));
  c.commit(sample_layout());
  EXPECT_FALSE(c.load([](uint64_t, std::span<const uint8_t>) {}, [](const VmlinuxLayout&) {}).has_value());
}

TEST(KernelCache, KeepsOnlyTheNewestFew) {
  TempDir dir;
  for (int i = 0; i < 7; i++) {
    std::vector<uint8_t> bzimage(1000, static_cast<uint8_t>(i));
    KernelCache c(dir.path.string(), bzimage);
    record_kernel(c, sample_pieces());
  }
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) n += e.path().extension() == ".unpacked";
  EXPECT_EQ(n, 4u);
}

}  // namespace
}  // namespace passvm::boot
