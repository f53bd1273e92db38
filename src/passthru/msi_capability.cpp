#include "passthru/msi_capability.h"

#include <algorithm>

namespace passvm::passthru {

MsiCapability::MsiCapability(uint32_t offset, uint16_t control)
    : offset_(offset), is_64_(control & 0x80), per_vector_(control & 0x100) {
  size_ = 10 + (is_64_ ? 4 : 0) + (per_vector_ ? 10 : 0);
  // The header (id, next) is the device's; the config view relinks next pointers on top of it.
  // Control keeps the capable bits (64-bit, per-vector, multiple message capable) with enable and
  // multiple message enable clear, as after reset.
  auto ctrl = static_cast<uint16_t>(control & ~0x71u);
  regs_[2] = static_cast<uint8_t>(ctrl);
  regs_[3] = static_cast<uint8_t>(ctrl >> 8);
}

void MsiCapability::write(uint32_t config_offset, uint8_t value) {
  uint32_t rel = config_offset - offset_;
  if (rel >= size_) return;
  uint8_t writable = 0;
  uint32_t data_end = is_64_ ? 14 : 10;
  if (rel == 2)
    writable = 0x71;  // enable, multiple message enable
  else if (rel == 4)
    writable = 0xfc;  // the address is dword aligned
  else if (rel > 4 && rel < data_end)
    writable = 0xff;  // address (upper address) and data
  else if (per_vector_ && config_offset >= mask_offset() && config_offset < mask_offset() + 4)
    writable = 0xff;
  regs_[rel] = static_cast<uint8_t>((regs_[rel] & ~writable) | (value & writable));
}

void MsiCapability::set_pending(uint32_t bits) {
  if (!per_vector_) return;
  uint32_t rel = pending_offset() - offset_;
  for (uint32_t i = 0; i < 4; i++) regs_[rel + i] = static_cast<uint8_t>(bits >> (8 * i));
}

uint32_t MsiCapability::load(uint32_t rel, int size) const {
  uint32_t v = 0;
  for (int i = 0; i < size; i++) v |= uint32_t{regs_[rel + static_cast<uint32_t>(i)]} << (8 * i);
  return v;
}

MsiCapability::Message MsiCapability::message() const {
  Message m;
  uint32_t ctrl = load(2, 2);
  m.enabled = ctrl & 1;
  // The PCI spec caps multiple message enable at 32 vectors (5) and at what the device is capable of.
  uint32_t capable = (ctrl >> 1) & 7, enabled = (ctrl >> 4) & 7;
  m.vectors = 1u << std::min({enabled, capable, 5u});
  m.address = load(4, 4);
  if (is_64_) m.address |= static_cast<uint64_t>(load(8, 4)) << 32;
  m.data = load(is_64_ ? 12 : 8, 2);
  if (per_vector_) m.mask = load(mask_offset() - offset_, 4);
  return m;
}

}  // namespace passvm::passthru
