#include "host/sysroot.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "host/host_error.h"

namespace passvm::host {

namespace fs = std::filesystem;

Sysroot::Sysroot(fs::path root) : root_(root.empty() ? fs::path("/") : std::move(root)) {}

Sysroot Sysroot::from_environment() {
  const char* env = std::getenv("PASSVM_SYSROOT");
  return Sysroot(env && *env ? fs::path(env) : fs::path("/"));
}

bool Sysroot::is_real_root() const {
  std::error_code ec;
  return fs::equivalent(root_, "/", ec);
}

fs::path Sysroot::path(std::string_view host_path) const {
  while (!host_path.empty() && host_path.front() == '/') host_path.remove_prefix(1);
  return root_ / fs::path(host_path);
}

bool Sysroot::exists(std::string_view host_path) const {
  std::error_code ec;
  return fs::exists(path(host_path), ec);
}

std::optional<std::string> Sysroot::read(std::string_view host_path) const {
  std::ifstream in(path(host_path), std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return out.str();
}

std::optional<std::string> Sysroot::read_line(std::string_view host_path) const {
  auto text = read(host_path);
  if (!text) return std::nullopt;
  std::string line = text->substr(0, text->find('\n'));
  const char* space = " \t\r\n";
  auto first = line.find_first_not_of(space);
  if (first == std::string::npos) return std::string();
  return line.substr(first, line.find_last_not_of(space) - first + 1);
}

std::vector<std::string> Sysroot::list(std::string_view host_path) const {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(path(host_path), ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::optional<std::string> Sysroot::link_name(std::string_view host_path) const {
  std::error_code ec;
  fs::path target = fs::read_symlink(path(host_path), ec);
  if (ec) return std::nullopt;
  if (!target.has_filename()) target = target.parent_path();
  return target.filename().string();
}

std::optional<std::string> Sysroot::link_target(std::string_view host_path) const {
  std::error_code ec;
  fs::path target = fs::read_symlink(path(host_path), ec);
  if (ec) return std::nullopt;
  if (target.is_absolute()) return target.string();
  return (fs::path(host_path).parent_path() / target).lexically_normal().string();  // a relative one, as a host path
}

std::optional<std::string> Sysroot::resolve(std::string_view host_path) const {
  std::error_code ec;
  fs::path real = fs::canonical(path(host_path), ec);
  if (ec) return std::nullopt;
  fs::path root = fs::canonical(root_, ec);
  if (ec) return std::nullopt;
  fs::path rel = real.lexically_relative(root);
  if (rel.empty() || *rel.begin() == "..") return std::nullopt;
  return rel == "." ? std::string("/") : "/" + rel.string();
}

void Sysroot::write(std::string_view host_path, std::string_view value) const {
  fs::path file = path(host_path);
  int fd = ::open(file.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    throw HostError(fmt::format("cannot open {} for writing: {}{}", file.string(), std::strerror(err),
                                err == EACCES || err == EPERM ? " (run as root)" : ""));
  }
  ssize_t n = ::write(fd, value.data(), value.size());
  int err = errno;
  ::close(fd);
  if (n < 0 || static_cast<size_t>(n) != value.size()) {
    throw HostError(fmt::format("writing '{}' to {} failed: {}", value, file.string(),
                                n < 0 ? std::strerror(err) : "short write"));
  }
}

void Sysroot::write_file(std::string_view host_path, std::string_view content) const {
  fs::path file = path(host_path);
  std::error_code ec;
  fs::create_directories(file.parent_path(), ec);
  // Whole or not at all: a record cut short by a full disk would lose the driver a release gives back.
  // Every step is checked (a buffered stream reported a failed write only at a close nobody checked).
  const fs::path tmp = file.string() + fmt::format(".tmp{}", getpid());
  auto fail = [&](int err) {
    ::unlink(tmp.c_str());
    return HostError(fmt::format("cannot write {}: {}; check that its directory is writable and has room",
                                 file.string(), std::strerror(err)));
  };
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) throw fail(errno);
  for (size_t done = 0; done < content.size();) {
    ssize_t n = ::write(fd, content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : ENOSPC;
      ::close(fd);
      throw fail(err);
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    int err = errno;
    ::close(fd);
    throw fail(err);
  }
  if (::close(fd) != 0) throw fail(errno);
  if (::rename(tmp.c_str(), file.c_str()) != 0) throw fail(errno);
}

void Sysroot::remove(std::string_view host_path) const {
  std::error_code ec;
  fs::remove(path(host_path), ec);
}

namespace {

// Where a fake tree keeps the ownership set_owner would have given a file.
constexpr std::string_view kOwnerRecords = ".passvm-owner";

}  // namespace

std::optional<FileOwner> Sysroot::owner(std::string_view host_path) const {
  if (!exists(host_path)) return std::nullopt;
  if (!is_real_root()) {
    if (auto record = read(std::string(kOwnerRecords) + "/" + path(host_path).lexically_relative(root_).string())) {
      FileOwner owner;
      std::istringstream in(*record);
      if (in >> owner.uid >> owner.gid >> std::oct >> owner.mode) return owner;
    }
  }
  struct stat st {};
  if (::stat(path(host_path).c_str(), &st) != 0) return std::nullopt;
  return FileOwner{st.st_uid, st.st_gid, st.st_mode & 07777};
}

void Sysroot::set_owner(std::string_view host_path, const FileOwner& owner) const {
  fs::path file = path(host_path);
  if (!exists(host_path)) throw HostError(fmt::format("cannot give {} to uid {}: it does not exist", file.string(), owner.uid));
  if (!is_real_root()) {
    write_file(std::string(kOwnerRecords) + "/" + file.lexically_relative(root_).string(),
               fmt::format("{} {} {:o}\n", owner.uid, owner.gid, owner.mode));
    return;
  }
  if (::chown(file.c_str(), owner.uid, owner.gid) != 0 || ::chmod(file.c_str(), owner.mode) != 0) {
    int err = errno;
    throw HostError(fmt::format("cannot give {} to uid {} gid {} mode {:04o}: {}{}", file.string(), owner.uid,
                                owner.gid, owner.mode, std::strerror(err), err == EPERM ? " (run as root)" : ""));
  }
}

}  // namespace passvm::host
