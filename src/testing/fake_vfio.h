// testing: an in-memory VFIO device and a recording Platform, so the passthrough logic runs without KVM.
#pragma once

#include <fmt/format.h>

#include <cerrno>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <set>
#include <tuple>
#include <vector>

#include "passthru/platform.h"
#include "pci/pci_device.h"
#include "vfio/device.h"

namespace passvm::testing {

struct FakeVfioState {
  std::vector<uint8_t> config = std::vector<uint8_t>(4096, 0);
  std::map<uint32_t, std::vector<uint8_t>> bars;  // region index -> contents
  std::map<uint32_t, vfio::RegionInfo> regions;
  std::map<uint32_t, uint32_t> irq_counts = {{VFIO_PCI_INTX_IRQ_INDEX, 1}, {VFIO_PCI_MSI_IRQ_INDEX, 1},
                                             {VFIO_PCI_MSIX_IRQ_INDEX, 4}};
  struct IrqSet {
    uint32_t index;
    vfio::IrqAction action;
    std::vector<int> fds;
    uint32_t start = 0;
  };
  std::vector<IrqSet> irq_sets;
  std::vector<uint32_t> disabled;
  std::vector<std::pair<uint32_t, uint32_t>> config_writes;  // offset, size
  // Interrupt indexes whose next SET_IRQS with eventfds fails, as when the host runs out of vectors.
  std::set<uint32_t> refuse_irqs;
  // MSI-X as on kernels before 6.5: the vector count is fixed while it is on (VFIO_IRQ_INFO_NORESIZE).
  bool msix_noresize = true;
  // Host vectors the kernel can give MSI-X: asking for more fails as a real shortfall does.
  uint32_t msix_host_limit = 2048;
  // Offset of a power management capability the test put in config: BAR reads and writes then fail while
  // its PMCSR says D1-D3, as vfio-pci's do. pm_stuck: writes to PMCSR do not change the power state.
  std::optional<uint32_t> pm;
  bool pm_stuck = false;
  bool closed = false;  // the device was released (vfio-pci resets it then)
  std::vector<void*> host_unmapped;  // BAR mappings passvm gave back
  bool config_reads_fail = false;     // a device gone from the bus, as vfio-pci reports it
  // Every write, interrupt change and the release, in order: "config 0x4=0x2", "bar0 0x100=0x0",
  // "disable 2", "close".
  std::vector<std::string> events;
  // Called as each write reaches the device, before it lands: a test sees what the VMM had done by then.
  std::function<void(uint32_t region, uint64_t offset)> on_write;
  // A region (BAR or ROM) of `size` zero bytes.
  void add_region(uint32_t index, uint64_t size, bool mmappable = false, bool writable = true) {
    vfio::RegionInfo r;
    r.index = index;
    r.size = size;
    r.readable = true;
    r.writable = writable;
    r.mmappable = mmappable;
    regions[index] = r;
    bars[index] = std::vector<uint8_t>(size, 0);
  }
  void set32(uint32_t off, uint32_t v) { pci::store_le(&config[off], 4, v); }
  void set16(uint32_t off, uint32_t v) { pci::store_le(&config[off], 2, v); }
};

class FakeVfioDevice final : public vfio::Device {
 public:
  explicit FakeVfioDevice(FakeVfioState& s) : s_(s) {}
  ~FakeVfioDevice() override {
    s_.closed = true;
    s_.events.push_back("close");
  }
  std::string name() const override { return "0000:00:03.0"; }
  uint32_t num_regions() const override { return 9; }
  uint32_t num_irqs() const override { return 5; }
  vfio::RegionInfo region_info(uint32_t index) const override {
    if (index == VFIO_PCI_CONFIG_REGION_INDEX) {
      vfio::RegionInfo r;
      r.index = index;
      r.size = s_.config.size();
      r.readable = r.writable = true;
      return r;
    }
    auto it = s_.regions.find(index);
    return it == s_.regions.end() ? vfio::RegionInfo{} : it->second;
  }
  std::vector<uint8_t>& buffer(uint32_t region) {
    return region == VFIO_PCI_CONFIG_REGION_INDEX ? s_.config : s_.bars.at(region);
  }
  void refuse_out_of_d0(uint32_t region) const {
    if (region != VFIO_PCI_CONFIG_REGION_INDEX && s_.pm && (s_.config[*s_.pm + 4] & 3) != 0)
      throw vfio::VfioError(fmt::format("fake: BAR {} access in D{}", region, s_.config[*s_.pm + 4] & 3), EIO);
  }
  void read(uint32_t region, uint64_t offset, std::span<uint8_t> data) override {
    refuse_out_of_d0(region);
    if (s_.config_reads_fail && region == VFIO_PCI_CONFIG_REGION_INDEX)
      throw vfio::VfioError("fake: config read failed", EIO);
    auto& b = buffer(region);
    if (offset + data.size() > b.size()) throw vfio::VfioError("fake: read out of range");
    std::copy_n(b.begin() + static_cast<long>(offset), data.size(), data.begin());
  }
  void write(uint32_t region, uint64_t offset, std::span<const uint8_t> data) override {
    refuse_out_of_d0(region);
    auto& b = buffer(region);
    if (offset + data.size() > b.size()) throw vfio::VfioError("fake: write out of range");
    if (region == VFIO_PCI_CONFIG_REGION_INDEX)
      s_.config_writes.push_back({static_cast<uint32_t>(offset), static_cast<uint32_t>(data.size())});
    if (s_.on_write) s_.on_write(region, offset);
    uint32_t v = 0;
    for (size_t i = 0; i < data.size() && i < 4; i++) v |= uint32_t{data[i]} << (8 * i);
    s_.events.push_back(fmt::format("{} {:#x}={:#x}",
                                    region == VFIO_PCI_CONFIG_REGION_INDEX ? "config" : fmt::format("bar{}", region),
                                    offset, v));
    const uint8_t power = s_.pm ? s_.config[*s_.pm + 4] & 3 : 0;
    std::copy(data.begin(), data.end(), b.begin() + static_cast<long>(offset));
    if (s_.pm && s_.pm_stuck && region == VFIO_PCI_CONFIG_REGION_INDEX)
      s_.config[*s_.pm + 4] = static_cast<uint8_t>((s_.config[*s_.pm + 4] & ~3) | power);
  }
  void* map(uint32_t region, uint64_t offset, uint64_t) override {
    if (!region_info(region).mmappable) return nullptr;
    return buffer(region).data() + offset;
  }
  void unmap(void* p, uint64_t) override { s_.host_unmapped.push_back(p); }
  vfio::IrqInfo irq_info(uint32_t index) const override {
    vfio::IrqInfo i;
    i.index = index;
    i.count = s_.irq_counts.count(index) ? s_.irq_counts.at(index) : 0;
    i.eventfd = true;
    i.noresize = index == VFIO_PCI_MSIX_IRQ_INDEX && s_.msix_noresize;
    return i;
  }
  void set_irq_eventfds(uint32_t index, vfio::IrqAction action, uint32_t start, std::span<const int> fds) override {
    if (s_.refuse_irqs.erase(index)) throw vfio::VfioError("fake: the host could allocate only 1 vector", ENOSPC);
    if (index == VFIO_PCI_MSIX_IRQ_INDEX && start + fds.size() > s_.msix_host_limit)
      throw vfio::VfioError(fmt::format("fake: the host could allocate only {} of the {} interrupt vectors asked for",
                                        s_.msix_host_limit, start + fds.size()));
    s_.irq_sets.push_back({index, action, {fds.begin(), fds.end()}, start});
    s_.events.push_back(fmt::format("irqs {} {}+{}", index, start, fds.size()));
  }
  void disable_irq(uint32_t index) override {
    s_.disabled.push_back(index);
    s_.events.push_back(fmt::format("disable {}", index));
  }
  void unmask_irq(uint32_t, uint32_t, uint32_t) override {}
  std::string reset_method() const override { return "flr"; }

 private:
  FakeVfioState& s_;
};

struct FakePlatform final : passthru::Platform {
  struct Slot {
    uint64_t gpa, size;
    void* hva;
    bool readonly;
  };
  std::map<uint32_t, Slot> slots;
  uint32_t next_slot = 0;
  std::map<std::pair<bool, uint64_t>, std::pair<uint64_t, BusDevice*>> traps;
  std::map<uint32_t, std::pair<uint64_t, uint32_t>> routes;
  uint32_t next_gsi = 24;
  std::set<std::tuple<int, uint32_t, int>> irqfds;  // fd, gsi, resample
  std::vector<std::pair<uint64_t, uint32_t>> signalled;

  bool refuse_readonly = false;  // as a KVM without KVM_CAP_READONLY_MEM
  uint32_t map_memory(uint64_t gpa, uint64_t size, void* hva, bool readonly) override {
    if (readonly && refuse_readonly) throw std::runtime_error("fake: no read-only memory");
    slots[next_slot] = {gpa, size, hva, readonly};
    return next_slot++;
  }
  bool refuse_unmap = false;  // KVM refusing to delete a memory slot
  void unmap_memory(uint32_t handle) override {
    if (refuse_unmap) throw std::runtime_error("fake: cannot delete the memory slot");
    slots.erase(handle);
  }
  void add_trap(bool pio, uint64_t base, uint64_t size, BusDevice* dev) override {
    for (auto& [key, t] : traps)  // as passvm's buses refuse overlapping ranges
      if (key.first == pio && key.second < base + size && base < key.second + t.first)
        throw std::invalid_argument("fake: trap overlaps another");
    traps[{pio, base}] = {size, dev};
  }
  void remove_trap(bool pio, uint64_t base) override { traps.erase({pio, base}); }
  bool mmio_free(uint64_t gpa, uint64_t size) override {
    for (auto& [key, t] : traps)
      if (!key.first && key.second < gpa + size && gpa < key.second + t.first) return false;
    return true;
  }
  bool refuse_routes = false;  // as KVM with its routing table full
  uint32_t alloc_msi_route(uint64_t a, uint32_t d) override {
    if (refuse_routes) throw std::runtime_error("fake: no free GSI");
    routes[next_gsi] = {a, d};
    return next_gsi++;
  }
  void update_msi_route(uint32_t gsi, uint64_t a, uint32_t d) override { routes.at(gsi) = {a, d}; }
  void free_msi_route(uint32_t gsi) override { routes.erase(gsi); }
  void add_irqfd(int fd, uint32_t gsi, int resample) override { irqfds.insert({fd, gsi, resample}); }
  bool refuse_irqfd_removal = false;  // KVM_IRQFD with DEASSIGN failing
  void remove_irqfd(int fd, uint32_t gsi) override {
    if (refuse_irqfd_removal) throw std::runtime_error("fake: cannot remove the irqfd");
    for (auto it = irqfds.begin(); it != irqfds.end(); ++it)
      if (std::get<0>(*it) == fd && std::get<1>(*it) == gsi) {
        irqfds.erase(it);
        return;
      }
  }
  void signal_msi(uint64_t a, uint32_t d) override { signalled.push_back({a, d}); }
};

// The IOMMU: what is mapped, by iova; with fail_after >= 0, the calls after that many fail.
struct FakeDmaMapper final : vfio::DmaMapper {
  std::map<uint64_t, std::pair<uint64_t, void*>> maps;
  std::map<uint64_t, std::pair<int, uint64_t>> files;  // iova -> fd, offset
  int fail_after = -1, calls = 0, fail_errno = ENOMEM;
  int attempts = 0;  // every map_dma call, failed or not
  void map_dma(const vfio::DmaRegion& r) override {
    attempts++;
    if (fail_after >= 0 && calls++ >= fail_after) throw vfio::VfioError("cannot pin", fail_errno);
    maps[r.iova] = {r.size, r.host};
    files[r.iova] = {r.fd, r.fd_offset};
  }
  void unmap_dma(uint64_t iova, uint64_t) override { maps.erase(iova); }
  std::vector<vfio::IovaRange> ranges;  // what iova_ranges() says; empty: unknown
  std::vector<vfio::IovaRange> iova_ranges() override { return ranges; }
};

// Lets a test keep the FakePlatform after the device (which owns its Platform) is gone.
struct ForwardingPlatform final : passthru::Platform {
  explicit ForwardingPlatform(passthru::Platform& p) : inner(p) {}
  passthru::Platform& inner;
  uint32_t map_memory(uint64_t gpa, uint64_t size, void* hva, bool readonly) override {
    return inner.map_memory(gpa, size, hva, readonly);
  }
  void unmap_memory(uint32_t h) override { inner.unmap_memory(h); }
  void add_trap(bool pio, uint64_t base, uint64_t size, BusDevice* dev) override {
    inner.add_trap(pio, base, size, dev);
  }
  void remove_trap(bool pio, uint64_t base) override { inner.remove_trap(pio, base); }
  bool mmio_free(uint64_t gpa, uint64_t size) override { return inner.mmio_free(gpa, size); }
  uint32_t alloc_msi_route(uint64_t a, uint32_t d) override { return inner.alloc_msi_route(a, d); }
  void update_msi_route(uint32_t gsi, uint64_t a, uint32_t d) override { inner.update_msi_route(gsi, a, d); }
  void free_msi_route(uint32_t gsi) override { inner.free_msi_route(gsi); }
  void add_irqfd(int fd, uint32_t gsi, int resample) override { inner.add_irqfd(fd, gsi, resample); }
  void remove_irqfd(int fd, uint32_t gsi) override { inner.remove_irqfd(fd, gsi); }
  void signal_msi(uint64_t a, uint32_t d) override { inner.signal_msi(a, d); }
};

}  // namespace passvm::testing
