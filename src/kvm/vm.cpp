#include "kvm/vm.h"

#include <fmt/format.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "kvm/uapi.h"

namespace passvm {

namespace {

[[noreturn]] void fail(const char* what, int err) {
  throw std::runtime_error(fmt::format("{} failed: {}", what, strerror(err)));
}

kvm_irq_routing_entry irqchip_route(uint32_t gsi, uint32_t chip, uint32_t pin) {
  kvm_irq_routing_entry e{};
  e.gsi = gsi;
  e.type = KVM_IRQ_ROUTING_IRQCHIP;
  e.u.irqchip.irqchip = chip;
  e.u.irqchip.pin = pin;
  return e;
}

kvm_irq_routing_entry msi_route(uint32_t gsi, uint64_t address, uint32_t data) {
  kvm_irq_routing_entry e{};
  e.gsi = gsi;
  e.type = KVM_IRQ_ROUTING_MSI;
  e.u.msi.address_lo = static_cast<uint32_t>(address);
  e.u.msi.address_hi = static_cast<uint32_t>(address >> 32);
  e.u.msi.data = data;
  return e;
}

}  // namespace

Vm::Vm(Kvm& kvm) : kvm_(kvm) {
  fd_ = ioctl(kvm.fd(), KVM_CREATE_VM, 0);
  if (fd_ < 0) {
    int err = errno;
    throw std::runtime_error(fmt::format("cannot create a VM: {}{}", strerror(err),
                                         err == ENOMEM ? " (out of memory)" : ""));
  }
  try {
    // The identity map must come before any vCPU exists; both must be outside RAM and device ranges.
    uint64_t idmap = kIdentityMapAddr;
    if (ioctl(fd_, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0) fail("KVM_SET_IDENTITY_MAP_ADDR", errno);
    if (ioctl(fd_, KVM_SET_TSS_ADDR, static_cast<unsigned long>(kTssAddr)) < 0) fail("KVM_SET_TSS_ADDR", errno);
    if (ioctl(fd_, KVM_CREATE_IRQCHIP, 0) < 0) fail("KVM_CREATE_IRQCHIP", errno);
    kvm_pit_config pit{};
    pit.flags = KVM_PIT_SPEAKER_DUMMY;  // port 0x61 reads work without an emulated speaker
    if (ioctl(fd_, KVM_CREATE_PIT2, &pit) < 0) fail("KVM_CREATE_PIT2", errno);

    int slots = kvm.check_extension(KVM_CAP_NR_MEMSLOTS);
    slot_used_.assign(slots > 0 ? static_cast<size_t>(slots) : 32u, false);
    int gsis = kvm.check_extension(KVM_CAP_IRQ_ROUTING);
    max_gsi_count_ = gsis > 0 ? static_cast<uint32_t>(gsis) : 1024u;

    // The same table KVM starts with (virt/kvm/irqchip default routing): the ISA IRQs reach both the
    // PIC and the IOAPIC, so the guest may use either; pins 16-23 are IOAPIC only (PCI INTx).
    for (uint32_t gsi = 0; gsi < 16; gsi++) {
      routes_.push_back(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
      routes_.push_back(irqchip_route(gsi, gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, gsi % 8));
    }
    for (uint32_t gsi = 16; gsi < kFirstMsiGsi; gsi++) routes_.push_back(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    std::lock_guard g(routes_lock_);
    commit_routes();
  } catch (...) {
    close(fd_);
    throw;
  }
}

Vm::~Vm() {
  if (vfio_device_ >= 0) close(vfio_device_);
  if (ring_) munmap(ring_, ring_bytes_);
  if (fd_ >= 0) close(fd_);
}

namespace {
// The entries follow `first` and `last`. Not ring->coalesced_mmio: the header declares that array with
// __DECLARE_FLEX_ARRAY, whose empty struct has size 1 in C++ and moves the array 8 bytes too far.
constexpr size_t kRingHeader = 2 * sizeof(uint32_t);
}  // namespace

void Vm::attach_coalesced_ring(int vcpu_fd) {
  std::lock_guard g(ring_lock_);
  if (ring_) return;
  // KVM_CAP_COALESCED_MMIO answers with the ring's page offset in the vCPU mapping.
  int page = kvm_.check_extension(KVM_CAP_COALESCED_MMIO);
  if (page <= 0 || kvm_.check_extension(KVM_CAP_COALESCED_PIO) <= 0) return;
  long page_size = sysconf(_SC_PAGESIZE);
  void* p = mmap(nullptr, static_cast<size_t>(page_size), PROT_READ | PROT_WRITE, MAP_SHARED, vcpu_fd,
                 static_cast<off_t>(page) * page_size);
  if (p == MAP_FAILED) return;  // an optimisation only: without the ring every write exits
  ring_ = static_cast<kvm_coalesced_mmio_ring*>(p);
  ring_bytes_ = static_cast<size_t>(page_size);
  ring_entries_ = static_cast<uint32_t>((ring_bytes_ - kRingHeader) / sizeof(kvm_coalesced_mmio));
}

bool Vm::coalesce_pio(uint16_t port, uint32_t len, bool on) {
  if (!ring_) return false;
  kvm_coalesced_mmio_zone zone{};
  zone.addr = port;
  zone.size = len;
  zone.pio = 1;
  if (ioctl(fd_, on ? KVM_REGISTER_COALESCED_MMIO : KVM_UNREGISTER_COALESCED_MMIO, &zone) < 0)
    fail(fmt::format("{} coalesced port writes {:#x}/{}", on ? "registering" : "unregistering", port, len).c_str(),
         errno);
  return true;
}

void Vm::drain_coalesced(Bus& pio, Bus& mmio) {
  if (!ring_ || __atomic_load_n(&ring_->first, __ATOMIC_ACQUIRE) == __atomic_load_n(&ring_->last, __ATOMIC_ACQUIRE))
    return;
  std::lock_guard g(ring_lock_);
  // KVM produces at `last`, we consume at `first`; an entry is ours to read once `last` has passed it.
  uint32_t first = __atomic_load_n(&ring_->first, __ATOMIC_RELAXED);
  uint32_t last = __atomic_load_n(&ring_->last, __ATOMIC_ACQUIRE);
  const auto* entries = reinterpret_cast<const kvm_coalesced_mmio*>(reinterpret_cast<const char*>(ring_) + kRingHeader);
  while (first != last && first < ring_entries_) {
    const kvm_coalesced_mmio& e = entries[first];
    uint8_t data[sizeof e.data];
    uint32_t len = std::min<uint32_t>(e.len, sizeof data);
    std::memcpy(data, e.data, len);
    if (e.pio)
      pio.write(e.phys_addr, std::span<const uint8_t>(data, len));
    else
      mmio.write(e.phys_addr, std::span<const uint8_t>(data, len));
    first = (first + 1) % ring_entries_;
    __atomic_store_n(&ring_->first, first, __ATOMIC_RELEASE);
  }
}

uint32_t Vm::map_memory(uint64_t gpa, uint64_t size, void* hva, bool readonly) {
  const uint64_t page = 4096;
  if (size == 0 || gpa % page || size % page || reinterpret_cast<uintptr_t>(hva) % page)
    throw std::invalid_argument(
        fmt::format("memory slot {:#x}+{:#x} at host {} is not page aligned", gpa, size, hva));
  if (readonly && kvm_.check_extension(KVM_CAP_READONLY_MEM) <= 0)
    throw std::runtime_error("this KVM cannot map read-only memory (KVM_CAP_READONLY_MEM): use a newer host kernel");
  std::lock_guard g(slots_lock_);
  auto it = std::find(slot_used_.begin(), slot_used_.end(), false);
  if (it == slot_used_.end())
    throw std::runtime_error(fmt::format("all {} KVM memory slots are in use: too many RAM regions or BARs mapped",
                                         slot_used_.size()));
  auto slot = static_cast<uint32_t>(it - slot_used_.begin());
  kvm_userspace_memory_region r{};
  r.slot = slot;
  r.flags = readonly ? KVM_MEM_READONLY : 0;
  r.guest_phys_addr = gpa;
  r.memory_size = size;
  r.userspace_addr = reinterpret_cast<uintptr_t>(hva);
  if (ioctl(fd_, KVM_SET_USER_MEMORY_REGION, &r) < 0) {
    int err = errno;
    throw std::runtime_error(fmt::format("cannot map guest range {:#x}+{:#x} into the VM: {}{}", gpa, size,
                                         strerror(err), err == EEXIST ? " (overlaps another mapping)" : ""));
  }
  *it = true;
  return slot;
}

void Vm::unmap_memory(uint32_t slot) {
  std::lock_guard g(slots_lock_);
  if (slot >= slot_used_.size() || !slot_used_[slot])
    throw std::invalid_argument(fmt::format("memory slot {} is not mapped", slot));
  kvm_userspace_memory_region r{};
  r.slot = slot;
  r.memory_size = 0;  // size 0 deletes the slot
  if (ioctl(fd_, KVM_SET_USER_MEMORY_REGION, &r) < 0) fail("KVM_SET_USER_MEMORY_REGION (delete)", errno);
  slot_used_[slot] = false;
}

void Vm::set_irq_line(uint32_t gsi, bool level) {
  kvm_irq_level l{};
  l.irq = gsi;
  l.level = level ? 1 : 0;
  if (ioctl(fd_, KVM_IRQ_LINE, &l) < 0) fail(fmt::format("KVM_IRQ_LINE gsi {}", gsi).c_str(), errno);
}

void Vm::commit_routes() {
  using kvm_uapi::IrqRoutingHeader;
  std::vector<uint8_t> buf(sizeof(IrqRoutingHeader) + routes_.size() * sizeof(kvm_irq_routing_entry));
  IrqRoutingHeader header{};
  header.nr = static_cast<uint32_t>(routes_.size());
  std::memcpy(buf.data(), &header, sizeof header);
  std::memcpy(buf.data() + sizeof header, routes_.data(), routes_.size() * sizeof(kvm_irq_routing_entry));
  if (ioctl(fd_, kvm_uapi::kSetGsiRouting, buf.data()) < 0) fail("KVM_SET_GSI_ROUTING", errno);
}

kvm_irq_routing_entry* Vm::find_msi_route(uint32_t gsi) {
  for (auto& e : routes_)
    if (e.gsi == gsi && e.type == KVM_IRQ_ROUTING_MSI) return &e;
  return nullptr;
}

uint32_t Vm::alloc_msi_route(uint64_t address, uint32_t data) {
  std::lock_guard g(routes_lock_);
  // Lowest GSI no route uses: freed vectors are reused, so the table stays small.
  std::vector<bool> used(max_gsi_count_, false);
  for (const auto& e : routes_)
    if (e.gsi < used.size()) used[e.gsi] = true;
  uint32_t gsi = kFirstMsiGsi;
  while (gsi < max_gsi_count_ && used[gsi]) gsi++;
  if (gsi >= max_gsi_count_)
    throw std::runtime_error(fmt::format("out of GSIs for MSI routes: KVM allows {}", max_gsi_count_));
  routes_.push_back(msi_route(gsi, address, data));
  try {
    commit_routes();
  } catch (...) {
    routes_.pop_back();
    throw;
  }
  return gsi;
}

void Vm::update_msi_route(uint32_t gsi, uint64_t address, uint32_t data) {
  std::lock_guard g(routes_lock_);
  kvm_irq_routing_entry* e = find_msi_route(gsi);
  if (!e) throw std::invalid_argument(fmt::format("GSI {} is not an MSI route", gsi));
  kvm_irq_routing_entry old = *e;
  *e = msi_route(gsi, address, data);
  try {
    commit_routes();
  } catch (...) {
    *e = old;
    throw;
  }
}

void Vm::free_msi_route(uint32_t gsi) {
  std::lock_guard g(routes_lock_);
  kvm_irq_routing_entry* e = find_msi_route(gsi);
  if (!e) throw std::invalid_argument(fmt::format("GSI {} is not an MSI route", gsi));
  routes_.erase(routes_.begin() + (e - routes_.data()));
  commit_routes();
}

std::vector<kvm_irq_routing_entry> Vm::routes() {
  std::lock_guard g(routes_lock_);
  return routes_;
}

bool Vm::add_vfio_group(int group_fd) {
  std::lock_guard g(vfio_lock_);
  if (vfio_device_ == -2) return false;
  if (vfio_device_ < 0) {
    kvm_create_device create{};
    create.type = KVM_DEV_TYPE_VFIO;
    if (ioctl(fd_, KVM_CREATE_DEVICE, &create) < 0) {
      if (errno != ENODEV && errno != ENOTTY) fail("KVM_CREATE_DEVICE (VFIO)", errno);
      vfio_device_ = -2;
      return false;
    }
    vfio_device_ = static_cast<int>(create.fd);
  }
  int32_t fd = group_fd;
  kvm_device_attr attr{};
  attr.group = KVM_DEV_VFIO_GROUP;
  attr.attr = KVM_DEV_VFIO_GROUP_ADD;
  attr.addr = reinterpret_cast<uint64_t>(&fd);
  if (ioctl(vfio_device_, KVM_SET_DEVICE_ATTR, &attr) < 0) fail("KVM_SET_DEVICE_ATTR (VFIO group add)", errno);
  return true;
}

void Vm::remove_vfio_group(int group_fd) {
  std::lock_guard g(vfio_lock_);
  if (vfio_device_ < 0) return;
  int32_t fd = group_fd;
  kvm_device_attr attr{};
  attr.group = KVM_DEV_VFIO_GROUP;
  attr.attr = KVM_DEV_VFIO_GROUP_DEL;
  attr.addr = reinterpret_cast<uint64_t>(&fd);
  ioctl(vfio_device_, KVM_SET_DEVICE_ATTR, &attr);  // fails only for a group never added: nothing to undo
}

bool Vm::signal_msi(uint64_t address, uint32_t data) {
  kvm_msi msi{};
  msi.address_lo = static_cast<uint32_t>(address);
  msi.address_hi = static_cast<uint32_t>(address >> 32);
  msi.data = data;
  // > 0: delivered; 0: the guest blocked it. KVM says EPERM (its internal -1) when no APIC matched the
  // destination, e.g. a guest-programmed address naming a CPU that does not exist.
  int r = ioctl(fd_, KVM_SIGNAL_MSI, &msi);
  if (r < 0 && errno != EPERM) fail("KVM_SIGNAL_MSI", errno);
  return r > 0;
}

void Vm::add_irqfd(int eventfd, uint32_t gsi, int resample_fd) {
  kvm_irqfd f{};
  f.fd = static_cast<uint32_t>(eventfd);
  f.gsi = gsi;
  if (resample_fd >= 0) {
    f.flags = KVM_IRQFD_FLAG_RESAMPLE;
    f.resamplefd = static_cast<uint32_t>(resample_fd);
  }
  if (ioctl(fd_, KVM_IRQFD, &f) < 0) fail(fmt::format("KVM_IRQFD (assign gsi {})", gsi).c_str(), errno);
}

void Vm::remove_irqfd(int eventfd, uint32_t gsi) {
  kvm_irqfd f{};
  f.fd = static_cast<uint32_t>(eventfd);
  f.gsi = gsi;
  f.flags = KVM_IRQFD_FLAG_DEASSIGN;
  if (ioctl(fd_, KVM_IRQFD, &f) < 0) fail(fmt::format("KVM_IRQFD (deassign gsi {})", gsi).c_str(), errno);
}

namespace {
kvm_ioeventfd make_ioeventfd(int eventfd, uint64_t addr, uint32_t len, bool pio) {
  kvm_ioeventfd io{};
  io.addr = addr;
  io.len = len;
  io.fd = eventfd;
  io.flags = pio ? KVM_IOEVENTFD_FLAG_PIO : 0;
  return io;
}
}  // namespace

void Vm::add_ioeventfd(int eventfd, uint64_t addr, uint32_t len, bool pio) {
  kvm_ioeventfd io = make_ioeventfd(eventfd, addr, len, pio);
  if (ioctl(fd_, KVM_IOEVENTFD, &io) < 0)
    fail(fmt::format("KVM_IOEVENTFD ({} {:#x}/{})", pio ? "port" : "mmio", addr, len).c_str(), errno);
}

void Vm::remove_ioeventfd(int eventfd, uint64_t addr, uint32_t len, bool pio) {
  kvm_ioeventfd io = make_ioeventfd(eventfd, addr, len, pio);
  io.flags |= KVM_IOEVENTFD_FLAG_DEASSIGN;
  if (ioctl(fd_, KVM_IOEVENTFD, &io) < 0)
    fail(fmt::format("KVM_IOEVENTFD deassign ({} {:#x}/{})", pio ? "port" : "mmio", addr, len).c_str(), errno);
}

}  // namespace passvm
