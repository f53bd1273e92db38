#include "boot/kernel_cache.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nettle/sha2.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>

namespace passvm::boot {

namespace {

// File layout: records {paddr u64, length u64, bytes}, then a trailer: the segment table
// {paddr, file_offset, file_size, mem_size} x n, entry u64, n u64, magic u64. The trailer is written last,
// so a file without it (a crash while recording) is recognisably incomplete.
constexpr uint64_t kMagic = 0x31584e4c4d565050ull;  // "PPVMLNX1"
constexpr size_t kMaxCached = 4;
constexpr size_t kMaxIndexed = 16;  // file index entries kept (one per kernel file booted)
constexpr uint64_t kChunk = 1 << 20;
// A temporary file is written within seconds of its creation; one an hour old was left by a passvm that
// was killed while unpacking, and nothing else would ever remove it.
constexpr auto kStaleTemporary = std::chrono::hours(1);

// Creates a temporary file the cache renames into place: never through a symlink or into a file someone
// left at that name (passvm may write a user's cache as root before it drops privileges), so a stale one
// is removed (the link itself, not its target) and the file made anew.
int create_private_tmp(const std::string& path) {
  for (int attempt = 0; attempt < 2; attempt++) {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0 || errno != EEXIST) return fd;
    unlink(path.c_str());
  }
  return -1;
}

bool write_all(int fd, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    ssize_t w = write(fd, b, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    b += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool read_at(int fd, void* p, size_t n, uint64_t off) {
  auto* b = static_cast<uint8_t*>(p);
  while (n > 0) {
    ssize_t r = pread(fd, b, n, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    b += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return true;
}

}  // namespace

namespace {

// Whether root may write its cache at `dir`: only when every part of the path that exists is root's own,
// no symlink, and no one else's to change. sudo may keep a user's HOME; root writing there could be
// steered by that user (a directory swapped for a symlink while it writes) into any file. A directory
// others may write to is refused, but for a sticky one (/tmp) whose next part exists: others cannot
// rename root's there, but could create a part still missing before root does.
bool root_owns_path(const std::string& dir) {
  bool missing_below = false;
  for (std::filesystem::path p = dir; !p.empty(); p = p.parent_path()) {
    struct stat st {};
    if (lstat(p.c_str(), &st) != 0) {
      missing_below = true;  // to be created, by root
    } else {
      if (S_ISLNK(st.st_mode) || st.st_uid != 0) return false;
      if ((st.st_mode & (S_IWGRP | S_IWOTH)) && (!(st.st_mode & S_ISVTX) || missing_below)) return false;
      missing_below = false;
    }
    if (p == p.root_path()) break;
  }
  return true;
}

}  // namespace

CacheDirs KernelCache::default_dirs() {
  if (const char* d = getenv("PASSVM_CACHE_DIR")) {
    if (std::string(d) == "off") return {};
    return {d, kSharedCacheDir};  // named by whoever runs passvm: theirs to choose
  }
  std::string own;
  if (const char* x = getenv("XDG_CACHE_HOME"); x && *x)
    own = std::string(x) + "/passvm";
  else if (const char* h = getenv("HOME"); h && *h)
    own = std::string(h) + "/.cache/passvm";
  if (!own.empty() && geteuid() == 0 && !root_owns_path(own)) own.clear();  // the shared cache still serves
  return {own, kSharedCacheDir};
}

namespace {

// File times are coarse (a clock tick; two seconds for mtime on FAT, where ctime is the creation time): a
// file rewritten within the same tick as its last change keeps its times. Only a file whose times are all
// some seconds old is noted, so that any later write gives it other ones.
bool settled(const FileIdentity& file) {
  timespec now{};
  clock_gettime(CLOCK_REALTIME, &now);
  const int64_t limit = time_ns(now) - int64_t{3} * 1000000000;
  return file.ctime_ns <= limit && file.mtime_ns <= limit;
}

// A shared entry boots other users' guests: it counts only if neither it nor its directory can have been
// written by anyone but root or the user running passvm.
bool trusted(const struct stat& st) {
  return (st.st_uid == 0 || st.st_uid == geteuid()) && (st.st_mode & (S_IWGRP | S_IWOTH)) == 0;
}

}  // namespace

std::string KernelCache::entry_name(std::span<const uint8_t> bzimage) {
  sha256_ctx ctx;
  sha256_init(&ctx);
  sha256_update(&ctx, bzimage.size(), bzimage.data());
  unsigned char md[SHA256_DIGEST_SIZE];
  sha256_digest(&ctx, sizeof md, md);
  // 128 bits: finding two kernels with one name takes about 2^64 hashes.
  return fmt::format("kernel-{:02x}-{}.unpacked", fmt::join(std::span<const unsigned char>(md, 16), ""),
                     bzimage.size());
}

bool KernelCache::is_index(const std::string& file_name) {
  return file_name.starts_with("id-") && !file_name.ends_with(".tmp");
}

bool KernelCache::is_temporary(const std::string& file_name) {
  return (file_name.starts_with("id-") || file_name.starts_with("kernel-")) && file_name.ends_with(".tmp");
}

bool KernelCache::is_entry(const std::string& file_name) {
  return file_name.starts_with("kernel-") && file_name.ends_with(".unpacked");
}

KernelCache::KernelCache(CacheDirs dirs, std::span<const uint8_t> bzimage, const FileIdentity* file)
    : KernelCache(std::move(dirs), KernelImage::bytes(bzimage, file)) {}

KernelCache::KernelCache(CacheDirs dirs, KernelImage&& bzimage) : KernelCache(std::move(dirs), bzimage) {}

KernelCache::KernelCache(CacheDirs dirs, KernelImage& bzimage) : dir_(std::move(dirs.own)) {
  if (dir_.empty() && dirs.shared.empty()) return;
  std::string name;
  if (bzimage.identity() && !dir_.empty()) name = indexed_name(*bzimage.identity());
  hash_from_index_ = !name.empty();
  if (name.empty()) {
    name = entry_name(bzimage.whole());
    // After whole(): a file seen changing while it was read has thrown.
    const FileIdentity* file = bzimage.identity();
    if (file && !dir_.empty() && settled(*file)) write_index(*file, name);
  }
  if (!dir_.empty()) path_ = dir_ + "/" + name;
  if (!dirs.shared.empty() && dirs.shared != dir_) {
    struct stat st {};
    if (stat(dirs.shared.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && trusted(st)) shared_path_ = dirs.shared + "/" + name;
  }
}

KernelCache::~KernelCache() { abandon(); }

std::string KernelCache::index_path(const FileIdentity& file) const {
  return fmt::format("{}/id-{:x}-{:x}", dir_, file.dev, file.ino);
}

std::string KernelCache::indexed_name(const FileIdentity& file) const {
  std::ifstream in(index_path(file));
  FileIdentity seen{file.dev, file.ino};
  std::string name;
  if (!(in >> seen.size >> seen.mtime_ns >> seen.ctime_ns >> name) || !(seen == file)) return "";
  if (!is_entry(name) || !name.ends_with(fmt::format("-{}.unpacked", file.size)) || name.find('/') != name.npos)
    return "";
  return name;
}

void KernelCache::write_index(const FileIdentity& file, const std::string& name) const {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  const std::string path = index_path(file), tmp = fmt::format("{}.{}.tmp", path, getpid());
  const std::string line = fmt::format("{} {} {} {}\n", file.size, file.mtime_ns, file.ctime_ns, name);
  int fd = create_private_tmp(tmp);
  // The index only saves time: without it the next boot hashes again.
  if (fd < 0) return;
  bool ok = write_all(fd, line.data(), line.size());
  ok = close(fd) == 0 && ok;
  if (!ok || rename(tmp.c_str(), path.c_str()) != 0) unlink(tmp.c_str());
}

std::optional<VmlinuxLayout> KernelCache::load(const VmlinuxWriter::Write& write,
                                               const VmlinuxWriter::OnLayout& on_layout) {
  return load(write, on_layout, nullptr);
}

std::optional<VmlinuxLayout> KernelCache::load(const VmlinuxWriter::Write& write,
                                               const VmlinuxWriter::OnLayout& on_layout, const Destination& dest) {
  for (const auto& [path, own] : {std::pair{path_, true}, std::pair{shared_path_, false}}) {
    if (path.empty()) continue;
    if (auto layout = load_file(path, own, write, on_layout, dest)) {
      loaded_from_ = path;
      // Every later boot of a kernel whose first unpacking was killed hits the cache: sweep here too.
      if (own) prune(false);
      return layout;
    }
  }
  return std::nullopt;
}

std::optional<VmlinuxLayout> KernelCache::load_file(const std::string& path, bool own,
                                                    const VmlinuxWriter::Write& write,
                                                    const VmlinuxWriter::OnLayout& on_layout,
                                                    const Destination& dest) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  auto bad = [&]() -> std::optional<VmlinuxLayout> {
    if (own) unlink(path.c_str());  // a shared entry is its owner's to replace
    return std::nullopt;
  };
  struct stat st {};
  if (fstat(fd, &st) != 0) return bad();
  if (!own && (!S_ISREG(st.st_mode) || !trusted(st))) return std::nullopt;
  if (st.st_size < 24) return bad();
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  uint64_t tail[3];  // entry, n, magic
  if (!read_at(fd, tail, sizeof tail, size - sizeof tail) || tail[2] != kMagic || tail[1] == 0 || tail[1] > 64)
    return bad();
  VmlinuxLayout layout;
  layout.entry = tail[0];
  const uint64_t table_bytes = tail[1] * 4 * sizeof(uint64_t);
  if (table_bytes + sizeof tail > size) return bad();
  const uint64_t records_end = size - sizeof tail - table_bytes;
  std::vector<uint64_t> table(tail[1] * 4);
  if (!read_at(fd, table.data(), table_bytes, records_end)) return bad();
  for (uint64_t i = 0; i < tail[1]; i++) {
    ElfSegment s{table[i * 4], table[i * 4 + 1], table[i * 4 + 2], table[i * 4 + 3]};
    // on_layout checks [paddr, paddr + mem_size): one that wraps, or file bytes beyond it, would slip past.
    if (s.file_size > s.mem_size || s.paddr + s.mem_size < s.paddr) return bad();
    layout.segments.push_back(s);
  }
  // Validate the whole record stream before writing anything: a damaged file must not half-load, and a
  // record must land inside a segment's file bytes, the only guest memory on_layout approved.
  auto in_a_segment = [&](uint64_t paddr, uint64_t len) {
    return std::any_of(layout.segments.begin(), layout.segments.end(), [&](const ElfSegment& s) {
      return paddr >= s.paddr && paddr - s.paddr <= s.file_size && len <= s.file_size - (paddr - s.paddr);
    });
  };
  // The records are placed as they were checked: the file read again (its owner may rewrite it meanwhile)
  // gives their bytes only, never where they go.
  struct Record {
    uint64_t paddr, size, offset;
  };
  std::vector<Record> records;
  uint64_t off = 0;
  while (off < records_end) {
    uint64_t hdr[2];
    if (records_end - off < sizeof hdr || !read_at(fd, hdr, sizeof hdr, off) ||
        hdr[1] > records_end - off - sizeof hdr || !in_a_segment(hdr[0], hdr[1]))
      return bad();
    records.push_back({hdr[0], hdr[1], off + sizeof hdr});
    off += sizeof hdr + hdr[1];
  }
  on_layout(layout);
  std::vector<uint8_t> buf(kChunk);
  for (const Record& r : records) {
    if (uint8_t* to = dest && r.size != 0 ? dest(r.paddr, r.size) : nullptr) {
      if (!read_at(fd, to, r.size, r.offset)) return bad();
      continue;
    }
    for (uint64_t done = 0; done < r.size;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, r.size - done));
      if (!read_at(fd, buf.data(), n, r.offset + done)) return bad();
      write(r.paddr + done, std::span<const uint8_t>(buf).first(n));
      done += n;
    }
  }
  if (own) utimensat(AT_FDCWD, path.c_str(), nullptr, 0);  // recently used: pruned last
  return layout;
}

std::string KernelCache::add(const std::string& dir, std::span<const uint8_t> bzimage, const std::string& name) {
  const SetupHeader h = parse_setup_header(bzimage, name);
  std::error_code ec;
  bool created = std::filesystem::create_directories(dir, ec);
  if (ec)
    throw std::runtime_error(fmt::format("cannot create the cache directory {}: {}", dir, ec.message()));
  // Readable by all, as its entries are (0644), whatever the creator's umask: a shared cache made by root
  // with umask 077 would otherwise be one no user can read.
  if (created) chmod(dir.c_str(), 0755);
  if (access(dir.c_str(), W_OK) != 0)
    throw std::runtime_error(fmt::format("cannot write to the cache directory {}: {} (run as its owner, or give "
                                         "another with PASSVM_CACHE_DIR)", dir, strerror(errno)));
  KernelCache cache(CacheDirs{dir}, bzimage);
  // Already there and whole: nothing to do (loading it validates every record, and writes nothing).
  if (cache.load_file(cache.path_, true, [](uint64_t, std::span<const uint8_t>) {}, [](const VmlinuxLayout&) {},
                      nullptr))
    return cache.path_;
  // No guest RAM here: the segments go only to the cache file. Where they land is checked at each boot,
  // against that guest's RAM.
  VmlinuxWriter writer([&](uint64_t paddr, std::span<const uint8_t> bytes) { cache.record(paddr, bytes); },
                       [](const VmlinuxLayout&) {});
  std::string why;
  if (!unpack_bzimage(bzimage, h, writer, &why))
    throw std::runtime_error(fmt::format("{}: {}; passvm boots it with the guest's own decompressor, which needs no "
                                         "cache", name, why));
  cache.commit(writer.finish());
  // Readable by every user whatever the umask: a shared cache is for them.
  if (cache.failed_ || chmod(cache.path_.c_str(), 0644) != 0)
    throw std::runtime_error(fmt::format("could not write {} (is {} full?)", cache.path_, dir));
  return cache.path_;
}

void KernelCache::record(uint64_t paddr, std::span<const uint8_t> bytes) {
  // Whole guest pages of zeros are left out. About half of a distribution kernel's image is such pages
  // (.bss, .brk and alignment padding), and guest RAM is zero already: the entry is smaller and its load
  // reads only the rest.
  if (path_.empty() || failed_) return;
  constexpr uint64_t kPage = 4096;
  auto zero_page = [](const uint8_t* p) { return p[0] == 0 && std::memcmp(p, p + 1, kPage - 1) == 0; };
  size_t run = 0;  // start of the bytes not yet recorded
  size_t at = 0;
  while (at < bytes.size()) {
    size_t page_end = static_cast<size_t>(std::min<uint64_t>(bytes.size(), (paddr + at) / kPage * kPage + kPage - paddr));
    if ((paddr + at) % kPage == 0 && page_end - at == kPage && zero_page(bytes.data() + at)) {
      if (at > run) record_bytes(paddr + run, bytes.subspan(run, at - run));
      run = page_end;
    }
    at = page_end;
  }
  if (bytes.size() > run) record_bytes(paddr + run, bytes.subspan(run));
}

void KernelCache::record_bytes(uint64_t paddr, std::span<const uint8_t> bytes) {
  if (path_.empty() || failed_) return;
  if (tmp_fd_ < 0) {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    tmp_path_ = fmt::format("{}.{}.tmp", path_, getpid());
    tmp_fd_ = create_private_tmp(tmp_path_);
    if (tmp_fd_ < 0) {
      failed_ = true;
      return;
    }
  }
  uint64_t hdr[2] = {paddr, bytes.size()};
  if (!write_all(tmp_fd_, hdr, sizeof hdr) || !write_all(tmp_fd_, bytes.data(), bytes.size())) abandon();
}

void KernelCache::commit(const VmlinuxLayout& layout) {
  if (path_.empty() || failed_ || tmp_fd_ < 0) return;
  std::vector<uint64_t> trailer;
  for (const auto& s : layout.segments) trailer.insert(trailer.end(), {s.paddr, s.file_offset, s.file_size, s.mem_size});
  trailer.insert(trailer.end(), {layout.entry, layout.segments.size(), kMagic});
  bool ok = write_all(tmp_fd_, trailer.data(), trailer.size() * sizeof(uint64_t));
  // On disk before the name: after a power loss the name must not lead to a file whose trailer survived
  // but whose records did not, which the record walk in load_file could take for a kernel. Once per kernel.
  ok = ok && fdatasync(tmp_fd_) == 0;
  ok = close(tmp_fd_) == 0 && ok;
  tmp_fd_ = -1;
  if (!ok || rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    unlink(tmp_path_.c_str());
    failed_ = true;
    return;
  }
  prune(true);
}

void KernelCache::abandon() {
  if (tmp_fd_ >= 0) {
    close(tmp_fd_);
    unlink(tmp_path_.c_str());
    tmp_fd_ = -1;
  }
  failed_ = true;
}

void KernelCache::prune(bool least_used_too) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto stale = fs::file_time_type::clock::now() - kStaleTemporary;
  std::vector<std::pair<fs::file_time_type, fs::path>> entries, indexes;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    const std::string name = e.path().filename().string();
    if (is_temporary(name) && e.is_regular_file(ec) && e.last_write_time(ec) < stale) fs::remove(e.path(), ec);
    if (!least_used_too) continue;
    if (is_entry(name)) entries.emplace_back(e.last_write_time(ec), e.path());
    if (is_index(name)) indexes.emplace_back(e.last_write_time(ec), e.path());
  }
  for (auto [list, keep] : {std::pair{&entries, kMaxCached}, std::pair{&indexes, kMaxIndexed}}) {
    if (list->size() <= keep) continue;
    std::sort(list->begin(), list->end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    for (size_t i = keep; i < list->size(); i++) fs::remove((*list)[i].second, ec);
  }
}

}  // namespace passvm::boot
