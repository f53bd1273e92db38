// passthru: the MSI capability the guest programs, emulated whole.
//
// The guest's enable, message and per-vector mask bits are kept here and never
// written to the device: the host kernel owns the device's real MSI registers
// (VFIO programs them with host vectors), and a masked vector is parked on the
// host side instead (vectors.h), so its interrupt becomes a pending bit here.
// Pure register logic: the interrupt side reads message() after each write.
//
// Lifetime: a value owned by the config view; no locking of its own.
#pragma once

#include <array>
#include <cstdint>

namespace passvm::passthru {

class MsiCapability {
 public:
  // `offset`: where the capability sits in config space; `control`: the device's message control word.
  MsiCapability(uint32_t offset, uint16_t control);

  uint32_t offset() const { return offset_; }
  // Bytes the capability spans: 10, 14 (64-bit), 20 or 24 (with per-vector masking).
  uint32_t size() const { return size_; }
  // The registers this owns: all but the header (id and next pointer, which the config view keeps, as it
  // relinks capabilities).
  bool contains(uint32_t config_offset) const { return config_offset - offset_ - 2 < size_ - 2; }
  bool per_vector_masking() const { return per_vector_; }
  // Config offset of the pending bits (only with per-vector masking).
  uint32_t pending_offset() const { return mask_offset() + 4; }

  // One byte of the guest's view (config offset inside the capability).
  uint8_t read(uint32_t config_offset) const { return regs_[config_offset - offset_]; }
  // One byte written by the guest: only the writable bits change (the pending bits are read-only).
  void write(uint32_t config_offset, uint8_t value);
  // The host's pending bits, as the guest reads them.
  void set_pending(uint32_t bits);

  struct Message {
    bool enabled = false;
    uint32_t vectors = 1;  // as enabled (multiple message enable), never more than capable
    uint64_t address = 0;
    uint32_t data = 0;     // vector i sends (data & ~(vectors - 1)) | i
    uint32_t mask = 0;     // per-vector mask bits (0 without per-vector masking)
  };
  Message message() const;
  // The host could not supply the vectors: the guest reads Enable clear (what it reads is what is on).
  void clear_enable() { regs_[2] &= 0xfe; }

 private:
  uint32_t mask_offset() const { return offset_ + (is_64_ ? 16 : 12); }
  uint32_t load(uint32_t rel, int size) const;

  uint32_t offset_;
  bool is_64_, per_vector_;
  uint32_t size_;
  std::array<uint8_t, 24> regs_{};
};

}  // namespace passvm::passthru
