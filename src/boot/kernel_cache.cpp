#include "boot/kernel_cache.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace passvm::boot {

namespace {

// File layout: records {paddr u64, length u64, bytes}, then a trailer: the segment table
// {paddr, file_offset, file_size, mem_size} x n, entry u64, n u64, magic u64. The trailer is written last,
// so a file without it (a crash while recording) is recognisably incomplete.
constexpr uint64_t kMagic = 0x31584e4c4d565050ull;  // "PPVMLNX1"
constexpr size_t kMaxCached = 4;
constexpr uint64_t kChunk = 1 << 20;

uint64_t fnv1a(std::span<const uint8_t> data) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint8_t b : data) {
    h ^= b;
    h *= 0x100000001b3ull;
  }
  return h;
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

std::string KernelCache::default_dir() {
  if (const char* d = getenv("PASSVM_CACHE_DIR")) return std::string(d) == "off" ? "" : d;
  if (const char* x = getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/passvm";
  if (const char* h = getenv("HOME"); h && *h) return std::string(h) + "/.cache/passvm";
  return "";
}

KernelCache::KernelCache(std::string dir, std::span<const uint8_t> bzimage) : dir_(std::move(dir)) {
  if (dir_.empty()) return;
  path_ = fmt::format("{}/kernel-{:016x}-{}.unpacked", dir_, fnv1a(bzimage), bzimage.size());
}

KernelCache::~KernelCache() { abandon(); }

std::optional<VmlinuxLayout> KernelCache::load(const VmlinuxWriter::Write& write,
                                               const VmlinuxWriter::OnLayout& on_layout) {
  if (path_.empty()) return std::nullopt;
  int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  auto bad = [&]() -> std::optional<VmlinuxLayout> {
    unlink(path_.c_str());
    return std::nullopt;
  };
  struct stat st {};
  if (fstat(fd, &st) != 0 || st.st_size < 24) return bad();
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
  uint64_t off = 0;
  while (off < records_end) {
    uint64_t hdr[2];
    if (records_end - off < sizeof hdr || !read_at(fd, hdr, sizeof hdr, off) ||
        hdr[1] > records_end - off - sizeof hdr || !in_a_segment(hdr[0], hdr[1]))
      return bad();
    off += sizeof hdr + hdr[1];
  }
  on_layout(layout);
  std::vector<uint8_t> buf(kChunk);
  off = 0;
  while (off < records_end) {
    uint64_t hdr[2];
    read_at(fd, hdr, sizeof hdr, off);
    off += sizeof hdr;
    for (uint64_t done = 0; done < hdr[1];) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, hdr[1] - done));
      if (!read_at(fd, buf.data(), n, off + done)) return bad();
      write(hdr[0] + done, std::span<const uint8_t>(buf).first(n));
      done += n;
    }
    off += hdr[1];
  }
  utimensat(AT_FDCWD, path_.c_str(), nullptr, 0);  // recently used: pruned last
  return layout;
}

void KernelCache::record(uint64_t paddr, std::span<const uint8_t> bytes) {
  if (path_.empty() || failed_) return;
  if (tmp_fd_ < 0) {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    tmp_path_ = fmt::format("{}.{}.tmp", path_, getpid());
    tmp_fd_ = open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
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
  ok = close(tmp_fd_) == 0 && ok;
  tmp_fd_ = -1;
  if (!ok || rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    unlink(tmp_path_.c_str());
    failed_ = true;
    return;
  }
  prune();
}

void KernelCache::abandon() {
  if (tmp_fd_ >= 0) {
    close(tmp_fd_);
    unlink(tmp_path_.c_str());
    tmp_fd_ = -1;
  }
  failed_ = true;
}

void KernelCache::prune() {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<std::pair<fs::file_time_type, fs::path>> entries;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    auto name = e.path().filename().string();
    if (name.rfind("kernel-", 0) == 0 && e.path().extension() == ".unpacked")
      entries.emplace_back(e.last_write_time(ec), e.path());
  }
  if (entries.size() <= kMaxCached) return;
  std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t i = kMaxCached; i < entries.size(); i++) fs::remove(entries[i].second, ec);
}

}  // namespace passvm::boot
