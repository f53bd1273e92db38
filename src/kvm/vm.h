// kvm: thin, owning wrappers around the KVM API.
//
// Kvm is /dev/kvm; Vm is one virtual machine with the in-kernel interrupt
// controllers (PIC, IOAPIC, LAPIC, PIT) and a GSI routing table that passvm
// owns; Vcpu (vcpu.h) is one vCPU with its run loop. Errors are thrown as
// std::runtime_error carrying a message fit for the user.
//
// GSI routing: KVM_SET_GSI_ROUTING replaces the whole table, so Vm keeps the
// table (IOAPIC/PIC pins plus one entry per MSI vector) and commits it on
// every change. MSI vectors of passthrough devices get a GSI of their own and
// an irqfd on it: the device's eventfd then injects without waking passvm.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include <linux/kvm.h>

#include "bus/bus.h"

namespace passvm {

class Kvm {
 public:
  // Opens /dev/kvm (another path only in tests), checks the API version and the extensions passvm needs.
  explicit Kvm(const std::string& path = "/dev/kvm");
  ~Kvm();
  Kvm(const Kvm&) = delete;
  Kvm& operator=(const Kvm&) = delete;
  int fd() const { return fd_; }
  int check_extension(long ext) const;
  size_t vcpu_mmap_size() const;
  // KVM_GET_SUPPORTED_CPUID, as a buffer ready for KVM_SET_CPUID2.
  std::vector<uint8_t> supported_cpuid() const;
  // Most vCPUs one VM may have (KVM_CAP_MAX_VCPUS, falling back to KVM_CAP_NR_VCPUS).
  uint32_t max_vcpus() const;
  // The guest's physical address bits (CPUID 0x80000008 as KVM supports it; 36 when it says less or nothing):
  // the guest-physical address space RAM and the PCI windows share.
  uint32_t guest_phys_bits() const;

 private:
  int fd_ = -1;
};

// Where the VM's two private pages live: both inside the 32-bit hole, above
// the LAPIC and below 4 GiB, where layout.h puts nothing. Intel's VMX needs
// them (a TSS of three pages and an identity-mapped page table) to run real
// mode and unpaged guest code; AMD ignores them.
inline constexpr uint64_t kIdentityMapAddr = 0xfffbc000;
inline constexpr uint64_t kTssAddr = 0xfffbd000;

class Vm {
 public:
  explicit Vm(Kvm& kvm);  // creates the VM, the in-kernel irqchip and PIT, TSS and identity map
  ~Vm();
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  int fd() const { return fd_; }
  Kvm& kvm() const { return kvm_; }

  // Whether vCPUs made from now on show the guest VMX or SVM (when KVM offers them): nested guests.
  void set_nested(bool allowed) { nested_ = allowed; }
  bool nested() const { return nested_; }

  // Memory slots. Returns the slot id. readonly maps the range read-only (writes exit as MMIO).
  // gpa, size and hva must be page aligned.
  uint32_t map_memory(uint64_t gpa, uint64_t size, void* hva, bool readonly = false);
  void unmap_memory(uint32_t slot);

  // Level of an IOAPIC/PIC input (KVM_IRQ_LINE).
  void set_irq_line(uint32_t gsi, bool level);

  // MSI routes. alloc_msi_route returns a fresh GSI routed to the message; update and free change it.
  // GSIs 0-23 are the PIC/IOAPIC pins; MSI routes take the lowest free GSI from 24 up.
  uint32_t alloc_msi_route(uint64_t address, uint32_t data);
  void update_msi_route(uint32_t gsi, uint64_t address, uint32_t data);
  void free_msi_route(uint32_t gsi);
  // The KVM-VFIO device, told of every VFIO group whose devices this VM has: KVM then knows the VM has
  // assigned devices, so it posts their MSIs straight to the vCPUs where the IOMMU can (no host
  // interrupt, no injection), and honours the guest's caching and WBINVD when their DMA does not snoop
  // the CPU caches. Created with the first group. A group must be removed before its fd is closed: the
  // device holds a reference that keeps the group from the host. Returns false when this kernel has no
  // KVM-VFIO device (the devices then work, without those); throws when a group cannot be added.
  bool add_vfio_group(int group_fd);
  void remove_vfio_group(int group_fd);

  // Injects one MSI directly (KVM_SIGNAL_MSI), for emulated devices and masked-then-pending vectors.
  // Returns false when no vCPU took it: the guest blocked it (LAPIC disabled) or the address names no
  // APIC. Both are the guest's doing, so they are not errors; a failing ioctl throws.
  bool signal_msi(uint64_t address, uint32_t data);

  // irqfd: a write to eventfd injects gsi. With resample_fd >= 0 the GSI is level-triggered:
  // KVM signals resample_fd when the guest EOIs it, so the device can be unmasked (INTx).
  void add_irqfd(int eventfd, uint32_t gsi, int resample_fd = -1);
  void remove_irqfd(int eventfd, uint32_t gsi);

  // ioeventfd: a guest write to addr (of len bytes) signals eventfd without exiting to passvm.
  void add_ioeventfd(int eventfd, uint64_t addr, uint32_t len, bool pio);
  void remove_ioeventfd(int eventfd, uint64_t addr, uint32_t len, bool pio);

  // Coalesced port writes: guest writes to [port, port + len) are queued in a ring page shared with
  // KVM instead of exiting to passvm, and drain_coalesced() hands them, in order, to the buses. Only
  // for registers whose writes have no effect the guest could see before its next exit: every vCPU
  // drains before handling an exit, so a read of the device always sees the writes made before it,
  // and the machine drains periodically so that output never waits long for one.
  // attach_coalesced_ring(vcpu_fd) maps the ring (any vCPU will do; the first Vcpu calls it);
  // coalesce_pio returns false when this KVM cannot coalesce port writes, and writes then just exit.
  void attach_coalesced_ring(int vcpu_fd);
  bool coalesce_pio(uint16_t port, uint32_t len, bool on);
  void drain_coalesced(Bus& pio, Bus& mmio);

  // A copy of the routing table as last committed to KVM (for tests and diagnostics).
  std::vector<kvm_irq_routing_entry> routes();

  static constexpr uint32_t kFirstMsiGsi = 24;

 private:
  void commit_routes();  // with routes_lock_ held
  kvm_irq_routing_entry* find_msi_route(uint32_t gsi);  // with routes_lock_ held

  Kvm& kvm_;
  int fd_ = -1;
  bool nested_ = true;
  std::mutex slots_lock_;
  std::vector<bool> slot_used_;
  std::mutex routes_lock_;
  std::vector<kvm_irq_routing_entry> routes_;
  uint32_t max_gsi_count_ = 0;  // KVM_CAP_IRQ_ROUTING: the size of KVM's GSI space
  std::mutex ring_lock_;        // one drainer at a time, so entries are delivered in order
  kvm_coalesced_mmio_ring* ring_ = nullptr;
  std::mutex vfio_lock_;
  int vfio_device_ = -1;  // the KVM-VFIO device; -2: this kernel has none
  size_t ring_bytes_ = 0;
  uint32_t ring_entries_ = 0;
};

}  // namespace passvm
