#include "boot/boot_file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace passvm::boot {

namespace {

std::optional<FileIdentity> identity_of(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0) return std::nullopt;
  return FileIdentity{st.st_dev, st.st_ino, static_cast<uint64_t>(st.st_size), time_ns(st.st_mtim),
                      time_ns(st.st_ctim)};
}

std::runtime_error changed(const std::string& path) {
  return std::runtime_error(fmt::format(
      "kernel file {} changed while passvm read it (is something rewriting it?): start again once it is written",
      path));
}

}  // namespace

int open_boot_file(const std::string& path, const std::string& what, uint64_t* size) {
  auto open_error = [&](int err) {
    if (err == ENOENT) return std::runtime_error(fmt::format("{} file {} not found: check the path", what, path));
    if (err == EACCES)
      return std::runtime_error(fmt::format("{} file {} is not readable: check its permissions", what, path));
    return std::runtime_error(fmt::format("cannot open {} file {}: {}", what, path, strerror(err)));
  };
  auto not_regular = [&] { return std::runtime_error(fmt::format("{} file {} is not a regular file", what, path)); };
  // Refused before it is opened: opening some devices does something (a watchdog's arms it), and an API
  // client names these paths. The open is then checked to be of the file looked at.
  struct stat named {};
  if (stat(path.c_str(), &named) != 0) throw open_error(errno);
  if (!S_ISREG(named.st_mode)) throw not_regular();
  // O_NONBLOCK: a FIFO put there meanwhile opens at once, to be refused below, instead of waiting for a
  // writer; reads of a regular file ignore the flag.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw open_error(errno);
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_dev != named.st_dev || st.st_ino != named.st_ino) {
    close(fd);
    throw not_regular();
  }
  *size = static_cast<uint64_t>(st.st_size);
  return fd;
}

void read_boot_bytes(int fd, std::span<uint8_t> out, const std::string& path, const std::string& what) {
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw std::runtime_error(fmt::format("cannot read {} file {}: {}", what, path, strerror(errno)));
    if (n == 0)
      throw std::runtime_error(fmt::format("{} file {} shrank while it was read: is something rewriting it?",
                                           what, path));
    done += static_cast<size_t>(n);
  }
}

std::vector<uint8_t> read_boot_file(const std::string& path, const std::string& what) {
  uint64_t size = 0;
  int fd = open_boot_file(path, what, &size);
  std::vector<uint8_t> data(static_cast<size_t>(size));
  try {
    read_boot_bytes(fd, data, path, what);
  } catch (...) {
    close(fd);
    throw;
  }
  close(fd);
  return data;
}

KernelImage KernelImage::open(const std::string& path) {
  KernelImage k;
  k.path_ = path;
  k.fd_ = open_boot_file(path, "kernel", &k.size_);
  const std::optional<FileIdentity> before = identity_of(k.fd_);
  k.head_.resize(static_cast<size_t>(std::min<uint64_t>(k.size_, kHeadSize)));
  read_boot_bytes(k.fd_, k.head_, path, "kernel");  // the destructor closes fd_ if this throws
  if (before && before->size == k.size_ && identity_of(k.fd_) == before) k.identity_ = before;
  return k;
}

KernelImage KernelImage::bytes(std::span<const uint8_t> data, const FileIdentity* identity) {
  KernelImage k;
  k.given_ = data;
  k.size_ = data.size();
  if (identity) k.identity_ = *identity;
  return k;
}

KernelImage::KernelImage(KernelImage&& o) noexcept { *this = std::move(o); }

KernelImage& KernelImage::operator=(KernelImage&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) close(fd_);
    path_ = std::move(o.path_);
    fd_ = std::exchange(o.fd_, -1);
    size_ = o.size_;
    head_ = std::move(o.head_);
    all_ = std::move(o.all_);
    given_ = o.given_;
    read_ = o.read_;
    identity_ = o.identity_;
  }
  return *this;
}

KernelImage::~KernelImage() {
  if (fd_ >= 0) close(fd_);
}

std::span<const uint8_t> KernelImage::head() const {
  if (fd_ < 0) return given_.first(std::min<size_t>(given_.size(), kHeadSize));
  return head_;
}

std::span<const uint8_t> KernelImage::whole() {
  if (fd_ < 0) return given_;
  if (!read_) {
    all_.resize(static_cast<size_t>(size_));
    read_boot_bytes(fd_, all_, path_, "kernel");
    // The head was checked and parsed already; bytes of another version of the file would not fit it,
    // and a file known by its identity must still be the file the cache knows by it.
    const std::optional<FileIdentity> now = identity_of(fd_);
    if (!std::equal(head_.begin(), head_.end(), all_.begin()) || (identity_ && now != identity_))
      throw changed(path_);
    read_ = true;
  }
  return all_;
}

void KernelImage::release() {
  std::vector<uint8_t>().swap(head_);
  std::vector<uint8_t>().swap(all_);
  given_ = {};
  identity_.reset();
  read_ = false;
  size_ = 0;
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

}  // namespace passvm::boot
