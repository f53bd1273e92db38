// passthru: the host side of MSI / MSI-X vectors.
//
// Each vector in use has an eventfd that VFIO signals when the device raises it. A
// vector the guest has unmasked is wired to a KVM irqfd on an MSI route of its
// own, so delivery never wakes passvm. A masked vector is "parked": its irqfd is
// removed and the eventfd is watched instead (epoll), so an interrupt raised
// while masked becomes a pending bit (the PBA) and is injected with signal_msi
// when the guest unmasks it, as the spec requires. Messages that cannot be an
// x86 interrupt (address outside 0xfee00000-0xfeefffff) are parked too, with a
// warning, instead of handing KVM garbage; so is a vector KVM will not route (its
// routing table is full, or it refuses the irqfd).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "passthru/platform.h"
#include "passthru/warning_limit.h"

namespace passvm::passthru {

class Vectors {
 public:
  // watch_fd: an epoll fd parked vectors are added to (event data = tag << 32 | vector), or -1. kind
  // ("MSI", "MSI-X") starts what is said through warn, the device's WarningLimit.
  Vectors(Platform& platform, WarningLimit& warn, std::string device, std::string kind, int watch_fd, uint32_t tag)
      : platform_(platform),
        warn_(warn),
        name_(device + " " + kind),
        kind_(std::move(kind)),
        watch_fd_(watch_fd),
        tag_(tag) {}
  ~Vectors() { release(); }
  Vectors(const Vectors&) = delete;
  Vectors& operator=(const Vectors&) = delete;

  // Creates n parked vectors (their eventfds are then handed to VFIO). Throws on failure.
  void create(uint32_t n);
  // n vectors with no eventfd yet: each gets one when it is first used (ensure).
  void resize(uint32_t n);
  // The eventfd of vector i, created (parked) if it has none. Throws on failure.
  int ensure(uint32_t i);
  // Vector i goes back to having no eventfd (the host could not supply it).
  void drop(uint32_t i);
  bool has(uint32_t i) const { return i < v_.size() && v_[i].fd >= 0; }
  uint32_t count() const { return static_cast<uint32_t>(v_.size()); }
  // Vectors with an eventfd.
  uint32_t in_use() const;
  // The eventfd of each vector, -1 for those with none.
  std::vector<int> fds() const;

  // Wires vector i to the message, or parks it. Unparking delivers a pending interrupt. A vector
  // with no eventfd is left alone.
  void set(uint32_t i, uint64_t address, uint32_t data, bool masked);
  // True when parked vector i fired and was not delivered yet (reads its eventfd).
  bool pending(uint32_t i);
  // Called by the watcher when a parked vector's eventfd is readable.
  void poll(uint32_t i) { (void)pending(i); }

  // Removes irqfds, frees routes, closes eventfds.
  void release();

  std::atomic<uint64_t> masked_hits{0};   // interrupts that arrived on a parked vector
  std::atomic<uint64_t> routes_made{0};   // MSI routes allocated over the device's life

 private:
  struct Vector {
    int fd = -1;
    bool has_route = false;
    uint32_t gsi = 0;
    bool wired = false;  // irqfd registered
    bool pending = false;
    bool warned = false;        // said that its address is no interrupt
    bool route_warned = false;  // said that KVM would not route it
    bool mask_warned = false;   // said that KVM would not unwire it
    uint64_t address = 0;
    uint32_t data = 0;
  };
  void park(uint32_t i);
  void release(Vector& v);

  Platform& platform_;
  WarningLimit& warn_;
  std::string name_, kind_;
  int watch_fd_;
  uint32_t tag_;
  std::vector<Vector> v_;
};

inline bool is_x86_msi_address(uint64_t address) { return (address >> 20) == 0xfee; }

}  // namespace passvm::passthru
