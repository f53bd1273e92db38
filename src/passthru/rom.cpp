#include "passthru/rom.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace passvm::passthru {
namespace {

constexpr uint64_t kMinRom = 2048;          // the ROM register's address starts at bit 11
constexpr uint64_t kMaxRom = 16ull << 20;   // far beyond any real option ROM; a larger "ROM" is a mistake

}  // namespace

RomBar::RomBar(vfio::Device* dev, std::vector<uint8_t> image, uint64_t content_size)
    : dev_(dev), image_(std::move(image)), content_size_(content_size),
      size_(std::bit_ceil(std::max(content_size, kMinRom))) {}

std::unique_ptr<RomBar> RomBar::from_device(vfio::Device& dev) {
  vfio::RegionInfo ri = dev.region_info(VFIO_PCI_ROM_REGION_INDEX);
  if (ri.size == 0 || !ri.readable) return nullptr;
  return std::unique_ptr<RomBar>(new RomBar(&dev, {}, std::min(ri.size, kMaxRom)));
}

std::unique_ptr<RomBar> RomBar::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("rom={}: cannot read it: {}", path, strerror(errno)));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.empty()) throw std::runtime_error(fmt::format("rom={}: the file is empty", path));
  if (bytes.size() > kMaxRom)
    throw std::runtime_error(fmt::format("rom={}: {} bytes is more than the {} MiB an expansion ROM may have here", path,
                                         bytes.size(), kMaxRom >> 20));
  const uint64_t n = bytes.size();
  return std::unique_ptr<RomBar>(new RomBar(nullptr, std::move(bytes), n));
}

bool RomBar::map(Platform& platform, bool visible) {
  const std::optional<uint64_t> want = visible && enabled() ? std::optional(address()) : std::nullopt;
  if (want == trapped_at_) return true;
  if (trapped_at_) platform.remove_trap(false, *trapped_at_);
  trapped_at_.reset();
  if (!want) return true;
  try {
    platform.add_trap(false, *want, size_, this);
  } catch (const std::exception&) {
    return false;
  }
  trapped_at_ = want;
  return true;
}

void RomBar::read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0xff);
  if (offset >= content_size_) return;
  auto piece = data.first(std::min<uint64_t>(data.size(), content_size_ - offset));
  if (!dev_) {
    std::copy_n(image_.begin() + static_cast<std::ptrdiff_t>(offset), piece.size(), piece.begin());
    return;
  }
  try {
    dev_->read(VFIO_PCI_ROM_REGION_INDEX, offset, piece);
  } catch (const std::exception& e) {
    std::fill(piece.begin(), piece.end(), 0xff);
    fmt::print(stderr, "passvm: {}: reading its ROM: {}\n", dev_->name(), e.what());
  }
}

}  // namespace passvm::passthru
