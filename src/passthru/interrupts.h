// passthru: the device's interrupt modes on the host side: INTx, MSI, MSI-X.
//
// At most one mode is on. INTx is wired (trigger and resample eventfds to a KVM
// irqfd on the slot's GSI) while neither MSI nor MSI-X is; turning either on takes
// INTx down first and gives it back if the host refuses, so a failed enable leaves
// the guest with a working interrupt, and the caller clears the Enable bit the guest
// reads. Vectors (vectors.h) go straight from VFIO's eventfds to KVM irqfds.
//
// MSI-X vectors are given to the host as the guest unmasks them, not all at enable:
// a NIC with hundreds of table entries whose driver uses four costs the host four
// interrupts. MSI-X is switched on with no vector wired (the guest's view: all
// masked); a vector the host kernel cannot add on its own (VFIO_IRQ_INFO_NORESIZE,
// kernels before 6.5) is added by re-enabling MSI-X with the larger count, which is
// what the VFIO ABI allows. A vector the host cannot supply is named on stderr and
// stays without an interrupt; the others keep working.
//
// Lifetime and locking: owned by PassthruDevice. Every call but stop_watcher() is made
// with the device's lock held; the watcher thread (parked vectors' eventfds) takes that
// lock itself. stop_watcher() (without the lock) comes before the destructor.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "passthru/msi_capability.h"
#include "passthru/msix_table.h"
#include "passthru/platform.h"
#include "passthru/vectors.h"
#include "vfio/device.h"

namespace passvm::passthru {

class Interrupts {
 public:
  // watcher_thread: watch parked vectors on a thread (tests turn it off and poll through the PBA instead).
  Interrupts(vfio::Device& dev, Platform& platform, std::string name, std::mutex& lock, bool watcher_thread);
  ~Interrupts();  // every mode off
  Interrupts(const Interrupts&) = delete;
  Interrupts& operator=(const Interrupts&) = delete;
  void stop_watcher();

  void set_intx_gsi(uint32_t gsi);

  // The guest's MSI capability changed. False when the host refused the vectors (MSI stays off).
  bool apply_msi(const MsiCapability::Message& m);
  uint32_t msi_pending();

  // The guest's MSI-X enable and function mask changed. False when the host refused (MSI-X stays off).
  bool apply_msix(bool enable, bool function_masked, const MsixTable& table);
  // The guest rewrote table entry i.
  void msix_entry_changed(uint32_t i, const MsixTable& table);
  bool msix_pending(uint32_t i);

  // Vectors the host has given the device for MSI-X now (0 while off).
  uint32_t msix_host_vectors() const { return msix_on_ ? msix_.in_use() : 0; }
  uint64_t vectors_routed() const { return msi_.routes_made + msix_.routes_made; }
  uint64_t masked_interrupts() const { return msi_.masked_hits + msix_.masked_hits; }
  // What was said (or only counted) about interrupts the host or KVM refused (warning_limit.h).
  uint64_t warnings() const { return warn_.count(); }
  bool intx_wired() const { return intx_on_; }

  // Everything off (MSI, MSI-X, INTx), vectors released.
  void shutdown();

 private:
  void enable_intx();
  void disable_intx();
  bool start_msi(uint32_t count);
  void stop(uint32_t index, Vectors& vectors, bool& on);
  void apply_msix_vector(uint32_t i, const MsixTable& table);
  bool give_host_vector(uint32_t i);
  void watch();

  vfio::Device& dev_;
  Platform& platform_;
  std::string name_;
  std::mutex& lock_;
  int epoll_fd_ = -1, stop_fd_ = -1;
  std::thread watcher_;

  WarningLimit warn_;  // before the vectors, which say things through it
  Vectors msi_, msix_;
  bool msi_on_ = false, msix_on_ = false, msix_masked_ = false;
  // MSI-X: the kernel adds vectors one by one (no NORESIZE), and how many it has enabled now.
  bool msix_resizable_ = false;
  uint32_t msix_host_count_ = 0;

  std::optional<uint32_t> intx_gsi_;
  int intx_fd_ = -1, intx_resample_fd_ = -1;
  bool intx_on_ = false;
};

}  // namespace passvm::passthru
