// passthru: a PCI device of the host, given to the guest (bhyve's -s N,passthru,B/S/F).
//
// The device's own config space, BARs and interrupts come through the VFIO
// interface (src/vfio); what passvm adds is the part the guest must not touch
// directly: BAR addresses, MSI/MSI-X programming, capabilities it must not use.
// The data path is kept free of exits: MMIO BARs become KVM memory slots and
// interrupts go from the device's eventfds to KVM irqfds without passvm.
//
// Platform is everything the device needs from the machine (memory slots, bus
// traps, MSI routes, irqfds). KvmPlatform implements it on a Vm and two Buses;
// the unit tests implement it with a recorder, so the BAR and interrupt logic is
// tested without KVM or a real device.
#pragma once

#include <cstdint>

#include "bus/bus.h"

namespace passvm::passthru {

class Platform {
 public:
  virtual ~Platform() = default;
  // Guest RAM-like mapping of host memory (no exits; with `readonly`, guest writes exit as MMIO and reach
  // the trap there, if any). Returns a handle for unmap_memory; throws on failure.
  virtual uint32_t map_memory(uint64_t gpa, uint64_t size, void* hva, bool readonly) = 0;
  virtual void unmap_memory(uint32_t handle) = 0;
  // Trapped range on the port I/O (pio) or MMIO bus; throws when it overlaps another.
  virtual void add_trap(bool pio, uint64_t base, uint64_t size, BusDevice* dev) = 0;
  virtual void remove_trap(bool pio, uint64_t base) = 0;
  // No trapped MMIO range of any device overlaps [gpa, gpa+size).
  virtual bool mmio_free(uint64_t gpa, uint64_t size) = 0;
  // MSI routes and irqfds (see kvm/vm.h).
  virtual uint32_t alloc_msi_route(uint64_t address, uint32_t data) = 0;
  virtual void update_msi_route(uint32_t gsi, uint64_t address, uint32_t data) = 0;
  virtual void free_msi_route(uint32_t gsi) = 0;
  virtual void add_irqfd(int eventfd, uint32_t gsi, int resample_fd) = 0;
  virtual void remove_irqfd(int eventfd, uint32_t gsi) = 0;
  virtual void signal_msi(uint64_t address, uint32_t data) = 0;
};

}  // namespace passvm::passthru
