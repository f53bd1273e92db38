#include "passthru/rom.h"

#include <fmt/format.h>
#include <sys/mman.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include "base/eprint.h"

namespace passvm::passthru {
namespace {

constexpr uint64_t kMinRom = 4096;         // a page, so the image can be a memory slot (the spec's least is 2 KiB)
constexpr uint64_t kMaxRom = 16ull << 20;  // far beyond any real option ROM; a larger "ROM" is a mistake
constexpr uint64_t kReadChunk = 64 * 1024;

}  // namespace

RomBar::RomBar(vfio::Device* dev, uint64_t content_size)
    : dev_(dev), content_size_(content_size), size_(std::bit_ceil(std::max(content_size, kMinRom))) {
  void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error(fmt::format("cannot allocate {} KiB for a ROM image", size_ >> 10));
  image_ = static_cast<uint8_t*>(p);
  std::fill(image_, image_ + size_, 0xff);
}

RomBar::~RomBar() { munmap(image_, size_); }

std::unique_ptr<RomBar> RomBar::from_device(vfio::Device& dev) {
  vfio::RegionInfo ri = dev.region_info(VFIO_PCI_ROM_REGION_INDEX);
  if (ri.size == 0 || !ri.readable) return nullptr;
  return std::unique_ptr<RomBar>(new RomBar(&dev, std::min(ri.size, kMaxRom)));
}

std::unique_ptr<RomBar> RomBar::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("rom={}: cannot read it: {}", path, strerror(errno)));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.empty()) throw std::runtime_error(fmt::format("rom={}: the file is empty", path));
  if (bytes.size() > kMaxRom)
    throw std::runtime_error(fmt::format("rom={}: {} bytes is more than the {} MiB an expansion ROM may have here", path,
                                         bytes.size(), kMaxRom >> 20));
  auto rom = std::unique_ptr<RomBar>(new RomBar(nullptr, bytes.size()));
  std::copy(bytes.begin(), bytes.end(), rom->image_);
  rom->loaded_ = true;
  return rom;
}

void RomBar::load() {
  if (loaded_) return;
  loaded_ = true;
  try {
    for (uint64_t at = 0; at < content_size_; at += kReadChunk)
      dev_->read(VFIO_PCI_ROM_REGION_INDEX, at, std::span(image_ + at, std::min(kReadChunk, content_size_ - at)));
  } catch (const std::exception& e) {
    std::fill(image_, image_ + size_, 0xff);
    eprint("passvm: {}: reading its ROM: {}; the guest reads all ones\n", dev_->name(), e.what());
  }
}

bool RomBar::map(Platform& platform, bool visible) {
  const std::optional<uint64_t> want = visible && enabled() ? std::optional(address()) : std::nullopt;
  if (want == mapped_at_) return true;
  if (mapped_at_) {
    if (slot_) platform.unmap_memory(*slot_);  // throws with the ROM still where it was
    slot_.reset();
    platform.remove_trap(false, *mapped_at_);
  }
  mapped_at_.reset();
  slot_.reset();
  if (!want) return true;
  load();
  try {
    platform.add_trap(false, *want, size_, this);  // writes, and reads where read-only memory is missing
  } catch (const std::exception&) {
    return false;
  }
  mapped_at_ = want;
  try {
    slot_ = platform.map_memory(*want, size_, image_, true);
  } catch (const std::exception&) {
    // No read-only memory in this KVM: every read exits to the trap, which serves the same image.
  }
  return true;
}

void RomBar::read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0xff);
  if (offset < size_) std::copy_n(image_ + offset, std::min<uint64_t>(data.size(), size_ - offset), data.begin());
}

}  // namespace passvm::passthru
