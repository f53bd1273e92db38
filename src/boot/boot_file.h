// boot/boot_file.h: opening and reading the files a boot uses, with errors that name the file and the fix.
//
// KernelImage is the kernel's bzImage as a boot reads it. A boot needs the setup header at once (to check
// the file before any device is opened, and to place the kernel) and the rest only to unpack it or to hand
// it to the guest's own decompressor: a kernel the cache (kernel_cache.h) holds unpacked needs nothing
// more. So open() reads the first page, and whole() reads everything the first time it is asked.
//
// The cache trusts a file's identity (device, inode, size, mtime, ctime) to stand for its bytes. An image
// whose file is seen changing (between the two fstat calls around the first read, or by the time whole()
// has read it) either has no identity or refuses to give bytes that may be neither version.
//
// Lifetime: a KernelImage owns its descriptor and bytes until it is destroyed or release()d. One thread
// uses it at a time (the machine opens it; the loader thread then reads it).
#pragma once

#include <cstdint>
#include <ctime>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace passvm::boot {

// A file time (or clock reading) in ns, as FileIdentity keeps them.
inline int64_t time_ns(const timespec& t) { return int64_t{t.tv_sec} * 1000000000 + t.tv_nsec; }

// The file a bzImage was read from, as fstat(2) saw it.
struct FileIdentity {
  uint64_t dev = 0, ino = 0, size = 0;
  int64_t mtime_ns = 0, ctime_ns = 0;
  bool operator==(const FileIdentity&) const = default;
};

class KernelImage {
 public:
  static constexpr size_t kHeadSize = 4096;  // holds the setup header, which ends before 0x302

  // Opens the file and reads its head. Throws std::runtime_error naming the file: missing, unreadable,
  // not a regular file.
  static KernelImage open(const std::string& path);
  // Bytes already in memory, which must outlive the image; identity as if they came from that file.
  static KernelImage bytes(std::span<const uint8_t> data, const FileIdentity* identity = nullptr);

  KernelImage(KernelImage&& other) noexcept;
  KernelImage& operator=(KernelImage&& other) noexcept;
  KernelImage(const KernelImage&) = delete;
  KernelImage& operator=(const KernelImage&) = delete;
  ~KernelImage();

  uint64_t size() const { return size_; }
  // The first min(size, kHeadSize) bytes.
  std::span<const uint8_t> head() const;
  // All the bytes, read from the file on the first call. Throws std::runtime_error when the file changed
  // since open() (it is being rewritten): start again once it is written.
  std::span<const uint8_t> whole();
  // The file's identity, or nullptr: bytes given without one, or a file seen changing while opened.
  const FileIdentity* identity() const { return identity_ ? &*identity_ : nullptr; }
  // Frees the bytes read (the kernel is in guest RAM); head(), whole() and identity() are then gone.
  void release();

 private:
  KernelImage() = default;

  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
  std::vector<uint8_t> head_, all_;
  std::span<const uint8_t> given_;  // bytes(): the caller's
  bool read_ = false;
  std::optional<FileIdentity> identity_;
};

// Opens a boot file ("what" says which: "kernel", "initrd") with user-facing errors; returns the
// descriptor and sets *size.
int open_boot_file(const std::string& path, const std::string& what, uint64_t* size);
// Reads exactly out.size() bytes from offset 0 of fd, which is path.
void read_boot_bytes(int fd, std::span<uint8_t> out, const std::string& path, const std::string& what);
// Whole-file read with user-facing errors.
std::vector<uint8_t> read_boot_file(const std::string& path, const std::string& what);

}  // namespace passvm::boot
