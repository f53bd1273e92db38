#include "boot/kernel_cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>

#include "boot/linux_boot.h"

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

// Records the sample kernel as bzimage's entry in dir; returns the entry's path.
std::string sample_entry(const TempDir& dir, const std::vector<uint8_t>& bzimage) {
  KernelCache c(dir.path.string(), bzimage);
  record_kernel(c, sample_pieces());
  return c.path();
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

// A symlink planted where the entry is written first (passvm may write a user's cache as root): the
// file it points to is left alone, and the entry is written all the same.
TEST(KernelCache, APlantedSymlinkIsNotFollowed) {
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 7);
  std::string victim = (dir.path / "victim").string();
  { std::ofstream(victim) << "precious\n"; }
  {
    KernelCache c(dir.path.string(), bzimage);
    ASSERT_FALSE(c.path().empty());
    std::filesystem::create_symlink(victim, c.path() + "." + std::to_string(getpid()) + ".tmp");
    record_kernel(c, sample_pieces());
  }
  std::ifstream in(victim);
  std::string text;
  std::getline(in, text);
  EXPECT_EQ(text, "precious");
  std::map<uint64_t, std::vector<uint8_t>> loaded;
  KernelCache again(dir.path.string(), bzimage);
  EXPECT_TRUE(again.load([&](uint64_t a, std::span<const uint8_t> b) { loaded[a].insert(loaded[a].end(), b.begin(), b.end()); },
                         [](const VmlinuxLayout&) {})
                  .has_value());
  EXPECT_EQ(loaded, sample_pieces());
}

// Root (passvm before --user drops privileges, or run with sudo keeping HOME) has an own cache only in
// a directory that is root's: a user's home could steer its writes anywhere.
TEST(KernelCache, RootKeepsNoOwnCacheInAUsersHome) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root, to give the home to another user";
  TempDir home;
  const char* old_home = getenv("HOME");
  std::string saved_home = old_home ? old_home : "";
  const char* old_xdg = getenv("XDG_CACHE_HOME");
  std::string saved_xdg = old_xdg ? old_xdg : "";
  unsetenv("XDG_CACHE_HOME");
  unsetenv("PASSVM_CACHE_DIR");
  setenv("HOME", home.path.c_str(), 1);
  EXPECT_EQ(KernelCache::default_dirs().own, (home.path / ".cache/passvm").string()) << "root's own home";
  // Root's, but others may write to it: they could put their own .cache there first.
  ASSERT_EQ(chmod(home.path.c_str(), 0777), 0);
  EXPECT_EQ(KernelCache::default_dirs().own, "");
  ASSERT_EQ(chmod(home.path.c_str(), 01777), 0);
  EXPECT_EQ(KernelCache::default_dirs().own, "") << "sticky, with .cache still to be made";
  ASSERT_EQ(mkdir((home.path / ".cache").c_str(), 0755), 0);
  EXPECT_EQ(KernelCache::default_dirs().own, (home.path / ".cache/passvm").string()) << "sticky, .cache root's";
  ASSERT_EQ(chmod(home.path.c_str(), 0700), 0);
  ASSERT_EQ(chown(home.path.c_str(), 1000, 1000), 0);
  EXPECT_EQ(KernelCache::default_dirs().own, "");
  EXPECT_EQ(KernelCache::default_dirs().shared, kSharedCacheDir);
  if (old_home) setenv("HOME", saved_home.c_str(), 1); else unsetenv("HOME");
  if (old_xdg) setenv("XDG_CACHE_HOME", saved_xdg.c_str(), 1);
}

TEST(KernelCache, WholeZeroPagesAreNeitherStoredNorWritten) {
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 5);
  constexpr uint64_t base = 0x3000000, page = 4096;
  // Pages 1 and 3 are zeros; page 4 is zeros but for one byte; the pieces split pages 2 and 3 (as the
  // unpacker's output chunks fall anywhere), so page 3 is whole only across two pieces.
  std::vector<uint8_t> image(5 * page + 100);
  for (size_t i = 0; i < image.size(); i++) image[i] = static_cast<uint8_t>(i % 251 + 1);
  std::fill_n(image.begin() + page, page, 0);
  std::fill_n(image.begin() + 3 * page, 2 * page, 0);
  image[4 * page + 7] = 1;
  const size_t split = 3 * page + 1000;
  VmlinuxLayout layout;
  layout.entry = base;
  layout.segments = {{base, 0x1000, image.size(), image.size()}};
  {
    KernelCache c(dir.path.string(), bzimage);
    c.record(base, std::span(image).first(split));
    c.record(base + split, std::span(image).subspan(split));
    c.commit(layout);
  }
  ASSERT_EQ(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}), 1);
  const auto entry_size = fs::file_size(fs::directory_iterator(dir.path)->path());
  EXPECT_LT(entry_size, image.size() - page + 256) << "page 1 is not stored (256: headers and trailer)";
  EXPECT_GT(entry_size, image.size() - 2 * page) << "page 3, split between pieces, is stored";

  std::vector<uint8_t> ram(image.size(), 0);  // fresh guest RAM
  std::vector<std::pair<uint64_t, uint64_t>> written;
  KernelCache c(dir.path.string(), bzimage);
  auto got = c.load([](uint64_t, std::span<const uint8_t>) { ADD_FAILURE() << "dest gives memory"; },
                    [](const VmlinuxLayout&) {},
                    [&](uint64_t paddr, uint64_t length) {
                      written.emplace_back(paddr - base, length);
                      return ram.data() + (paddr - base);
                    });
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(ram, image);
  for (auto [off, len] : written)
    EXPECT_TRUE(off + len <= page || off >= 2 * page) << "page 1 written at " << off << "+" << len;
}

TEST(KernelCache, DamagedOrUnfinishedEntriesAreIgnoredAndRemoved) {
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 9);
  const std::string path = sample_entry(dir, bzimage);
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

// The entry's owner rewriting it while it loads (after its records were checked, before they are placed)
// changes at most the bytes that land, never where they land.
TEST(KernelCache, AnEntryRewrittenWhileItLoadsWritesOnlyWhereItWasChecked) {
  TempDir dir;
  std::vector<uint8_t> bzimage(1000, 9);
  const std::string path = sample_entry(dir, bzimage);
  std::vector<std::pair<uint64_t, size_t>> written;
  KernelCache c(dir.path.string(), bzimage);
  auto layout = c.load([&](uint64_t paddr, std::span<const uint8_t> b) { written.push_back({paddr, b.size()}); },
                       [&](const VmlinuxLayout&) {
                         int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
                         ASSERT_GE(fd, 0);
                         const uint64_t elsewhere = 0xe0000;  // the first record's address: now the ACPI area
                         ASSERT_EQ(pwrite(fd, &elsewhere, sizeof elsewhere, 0), 8);
                         close(fd);
                       });
  ASSERT_TRUE(layout.has_value());
  ASSERT_FALSE(written.empty());
  for (auto [paddr, size] : written) {
    bool inside = std::any_of(layout->segments.begin(), layout->segments.end(), [&](const ElfSegment& s) {
      return paddr >= s.paddr && paddr + size <= s.paddr + s.file_size;
    });
    EXPECT_TRUE(inside) << std::hex << "wrote " << size << " bytes at " << paddr;
  }
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

TEST(KernelCache, TemporaryFilesLeftByAKilledPassvmArePrunedOnceStale) {
  TempDir dir;
  const fs::path old_tmp = dir.path / "kernel-00-1000.unpacked.4242.tmp";
  const fs::path old_index_tmp = dir.path / "id-803-1a2b.4242.tmp";
  const fs::path fresh_tmp = dir.path / "kernel-11-1000.unpacked.4343.tmp";  // another passvm writing now
  const fs::path other = dir.path / "notes.tmp";  // not the cache's
  for (const auto& p : {old_tmp, old_index_tmp, fresh_tmp, other}) std::ofstream(p) << "partial";
  const auto two_hours_ago = fs::file_time_type::clock::now() - std::chrono::hours(2);
  for (const auto& p : {old_tmp, old_index_tmp, other}) fs::last_write_time(p, two_hours_ago);

  KernelCache c(dir.path.string(), std::vector<uint8_t>(1000, 9));
  record_kernel(c, sample_pieces());
  EXPECT_FALSE(fs::exists(old_tmp));
  EXPECT_FALSE(fs::exists(old_index_tmp));
  EXPECT_TRUE(fs::exists(fresh_tmp));
  EXPECT_TRUE(fs::exists(other));
  EXPECT_TRUE(fs::exists(c.path()));

  // Later boots of that kernel hit the cache and commit nothing: they sweep too.
  fs::last_write_time(fresh_tmp, two_hours_ago);
  EXPECT_TRUE(loads(dir.path, std::vector<uint8_t>(1000, 9)));
  EXPECT_FALSE(fs::exists(fresh_tmp));
}

TEST(KernelCache, EntriesAreNamedByTheBzImagesSha256) {
  // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad (FIPS 180-2).
  const std::vector<uint8_t> abc{'a', 'b', 'c'};
  EXPECT_EQ(KernelCache::entry_name(abc), "kernel-ba7816bf8f01cfea414140de5dae2223-3.unpacked");
  TempDir dir;
  EXPECT_EQ(KernelCache(CacheDirs{dir.path.string()}, abc).path(),
            (dir.path / "kernel-ba7816bf8f01cfea414140de5dae2223-3.unpacked").string());
}

FileIdentity old_file(uint64_t ino, uint64_t size) {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  const int64_t t = (int64_t{now.tv_sec} - 3600) * 1000000000;
  return {7, ino, size, t, t};
}

TEST(KernelCache, AnUnchangedFileIsNotHashedAgain) {
  TempDir dir;
  const std::vector<uint8_t> one{1, 2, 3, 4}, other{9, 9, 9, 9};
  FileIdentity file = old_file(42, one.size());
  KernelCache first(CacheDirs{dir.path.string()}, one, &file);
  EXPECT_FALSE(first.hash_from_index());
  EXPECT_EQ(first.path(), (dir.path / KernelCache::entry_name(one)).string());
  EXPECT_TRUE(fs::exists(dir.path / "id-7-2a"));
  // The same file, unchanged: the index answers, so these bytes are not even looked at.
  KernelCache again(CacheDirs{dir.path.string()}, other, &file);
  EXPECT_TRUE(again.hash_from_index());
  EXPECT_EQ(again.path(), first.path());
  // Any change to the file (its ctime, its mtime, its size) or another file: hashed again.
  FileIdentity rewritten = file, touched = file, other_file = file, other_device = file;
  rewritten.ctime_ns += 1;
  touched.mtime_ns += 1;
  other_file.ino += 1;
  other_device.dev += 1;
  for (const FileIdentity& changed : {rewritten, touched, other_file, other_device}) {
    KernelCache c(CacheDirs{dir.path.string()}, other, &changed);
    EXPECT_FALSE(c.hash_from_index());
    EXPECT_EQ(c.path(), (dir.path / KernelCache::entry_name(other)).string());
  }
  // A damaged index is no answer either.
  std::ofstream(dir.path / "id-7-2a") << "4 1 1 ../../etc/passwd\n";
  FileIdentity again_file = old_file(42, one.size());
  again_file.mtime_ns = again_file.ctime_ns = 1;
  EXPECT_FALSE(KernelCache(CacheDirs{dir.path.string()}, other, &again_file).hash_from_index());
}

TEST(KernelCache, AFileChangedMomentsAgoIsNotIndexed) {
  // Its ctime comes from a coarse clock: a second write within the same tick would not move it.
  TempDir dir;
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  const int64_t t = time_ns(now);
  const int64_t hour_ago = t - int64_t{3600} * 1000000000;
  const std::vector<uint8_t> bytes{1, 2, 3, 4};
  // Changed just now (ctime), or written just now on a file system whose ctime is the creation time.
  for (FileIdentity fresh : {FileIdentity{7, 43, 4, hour_ago, t}, FileIdentity{7, 43, 4, t, hour_ago}}) {
    KernelCache(CacheDirs{dir.path.string()}, bytes, &fresh);
    EXPECT_FALSE(fs::exists(dir.path / "id-7-2b"));
    EXPECT_FALSE(KernelCache(CacheDirs{dir.path.string()}, bytes, &fresh).hash_from_index());
  }
}

// Bytes this process has read through read(2) and pread(2) so far.
uint64_t bytes_read() {
  std::ifstream io("/proc/self/io");
  std::string key;
  uint64_t value = 0;
  while (io >> key >> value)
    if (key == "rchar:") return value;
  return 0;
}

TEST(KernelImage, OpenReadsTheHeadAndGivesTheFilesIdentityTheRestOnlyWhenAsked) {
  TempDir dir;
  const fs::path f = dir.path / "vmlinuz";
  std::vector<uint8_t> bytes(3 * KernelImage::kHeadSize + 5);
  for (size_t i = 0; i < bytes.size(); i++) bytes[i] = static_cast<uint8_t>(i * 7);
  std::ofstream(f, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                           static_cast<std::streamsize>(bytes.size()));
  const uint64_t before = bytes_read();
  KernelImage k = KernelImage::open(f.string());
  EXPECT_LT(bytes_read() - before, 2 * KernelImage::kHeadSize);
  EXPECT_EQ(k.size(), bytes.size());
  EXPECT_TRUE(std::ranges::equal(k.head(), std::span(bytes).first(KernelImage::kHeadSize)));
  const FileIdentity* seen = k.identity();
  ASSERT_NE(seen, nullptr);
  const FileIdentity id = seen ? *seen : FileIdentity{};
  struct stat st {};
  ASSERT_EQ(stat(f.c_str(), &st), 0);
  EXPECT_EQ(id.dev, st.st_dev);
  EXPECT_EQ(id.ino, st.st_ino);
  EXPECT_EQ(id.size, bytes.size());
  EXPECT_EQ(id.ctime_ns, time_ns(st.st_ctim));
  EXPECT_TRUE(std::ranges::equal(k.whole(), bytes));
  EXPECT_GE(bytes_read() - before, bytes.size());
}

TEST(KernelImage, AFileRewrittenAfterItWasOpenedGivesNoBytes) {
  TempDir dir;
  const fs::path f = dir.path / "vmlinuz";
  std::ofstream(f) << std::string(2 * KernelImage::kHeadSize, 'a');
  KernelImage k = KernelImage::open(f.string());
  const FileIdentity* opened = k.identity();
  ASSERT_NE(opened, nullptr);
  const int64_t opened_ctime = opened ? opened->ctime_ns : 0;
  // The same size and head, another tail: only the file's identity (its ctime) tells.
  timespec later{};
  do clock_gettime(CLOCK_REALTIME_COARSE, &later);
  while (time_ns(later) <= opened_ctime);
  std::ofstream(f, std::ios::in | std::ios::out).seekp(KernelImage::kHeadSize + 1) << 'b';
  try {
    k.whole();
    ADD_FAILURE() << "a rewritten kernel file gave bytes";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("changed while passvm read it"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace passvm::boot
