// passthru: Platform on the real machine: KVM memory slots, irqfds and MSI routes of a Vm, traps on its buses.
#pragma once

#include "kvm/vm.h"
#include "passthru/platform.h"

namespace passvm::passthru {

class KvmPlatform final : public Platform {
 public:
  KvmPlatform(Vm& vm, Bus& pio, Bus& mmio) : vm_(vm), pio_(pio), mmio_(mmio) {}

  uint32_t map_memory(uint64_t gpa, uint64_t size, void* hva, bool readonly) override {
    return vm_.map_memory(gpa, size, hva, readonly);
  }
  void unmap_memory(uint32_t handle) override { vm_.unmap_memory(handle); }
  void add_trap(bool pio, uint64_t base, uint64_t size, BusDevice* dev) override {
    (pio ? pio_ : mmio_).add(base, size, dev);
  }
  void remove_trap(bool pio, uint64_t base) override { (pio ? pio_ : mmio_).remove(base); }
  bool mmio_free(uint64_t gpa, uint64_t size) override { return !mmio_.overlaps(gpa, size); }
  uint32_t alloc_msi_route(uint64_t address, uint32_t data) override { return vm_.alloc_msi_route(address, data); }
  void update_msi_route(uint32_t gsi, uint64_t address, uint32_t data) override {
    vm_.update_msi_route(gsi, address, data);
  }
  void free_msi_route(uint32_t gsi) override { vm_.free_msi_route(gsi); }
  void add_irqfd(int eventfd, uint32_t gsi, int resample_fd) override { vm_.add_irqfd(eventfd, gsi, resample_fd); }
  void remove_irqfd(int eventfd, uint32_t gsi) override { vm_.remove_irqfd(eventfd, gsi); }
  void signal_msi(uint64_t address, uint32_t data) override { vm_.signal_msi(address, data); }

 private:
  Vm& vm_;
  Bus& pio_;
  Bus& mmio_;
};

}  // namespace passvm::passthru
