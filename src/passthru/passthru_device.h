// passthru: the passthrough PCI device the guest sees in its slot.
//
// This is the glue and the config view. Config space is the device's own, read and
// written through the transport, except the bytes passvm virtualizes (the table in
// README.md): BARs and the ROM register (bar_mapper.h), the interrupt line, the header
// type's multi-function bit, the MSI capability (msi_capability.h), MSI-X control and
// table (msix_table.h) and capability links (capabilities.h). Interrupt modes live in
// interrupts.h. Trapped BAR accesses come back here and are split between the device's
// registers and the emulated MSI-X table and PBA.
//
// Lifetime: the constructor reports how vfio-pci reset the device when it was opened
// (stderr) and stops what a reset left running (handover.h); the destructor undoes
// everything on every path, in the order README.md gives. DMA belongs to the container
// and is mapped once for all devices: see vfio/guest_dma.h.
//
// Thread safety: config accesses, trapped BAR accesses and the interrupt watcher may
// run on different threads at once; one lock (lock_) serializes the device's virtual
// state. Accesses forwarded to the device's own registers take no lock. A config write
// that enables bus mastering may block its vCPU, before taking the lock, until guest
// RAM is mapped for DMA (dma_ready.h).
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "bus/bus.h"
#include "kvm/vm.h"
#include "memory/layout.h"
#include "passthru/bar_layout.h"
#include "passthru/bar_mapper.h"
#include "passthru/capabilities.h"
#include "passthru/dma_ready.h"
#include "passthru/interrupts.h"
#include "passthru/msi_capability.h"
#include "passthru/msix_table.h"
#include "passthru/warning_limit.h"
#include "passthru/platform.h"
#include "pci/pci_device.h"
#include "vfio/device.h"
#include "vfio/linux_vfio.h"

namespace passvm::passthru {

struct PassthruOptions {
  // Watch masked vectors on a thread of the device's own. Tests turn it off and read the PBA instead.
  bool watcher_thread = true;
  // Where guest BARs may live; a BAR moved outside is left unmapped with a warning. nullopt: anywhere.
  std::optional<layout::PciWindows> windows = layout::PciWindows{};
  // The expansion ROM the guest sees comes from this file instead of the device (bhyve's rom=).
  std::string rom_file{};
  // Say on stderr how long each BAR took to map, into passvm and into the guest.
  bool verbose = false;
  // Peer-to-peer DMA: the MMIO BARs are mapped into this IOMMU at their guest addresses, so other devices
  // can DMA into them. nullptr: not mapped; such DMA is then blocked by the IOMMU.
  vfio::DmaMapper* peer_dma = nullptr;
  // Guest RAM is still being mapped for DMA: a guest's write turning bus mastering on waits for it
  // (dma_ready.h). nullptr: guest RAM is mapped already.
  DmaReady* dma_ready = nullptr;
};

class PassthruDevice final : public pci::PciDevice, private BarMapper::AccessHandler {
 public:
  PassthruDevice(std::unique_ptr<vfio::Device> device, std::unique_ptr<Platform> platform,
                 PassthruOptions options = {});
  ~PassthruDevice() override;
  PassthruDevice(const PassthruDevice&) = delete;
  PassthruDevice& operator=(const PassthruDevice&) = delete;

  uint32_t config_read(uint32_t offset, int size) override;
  void config_write(uint32_t offset, int size, uint32_t value) override;
  std::vector<pci::BarRequest> bar_requests() const override;
  void assign_bar(int index, uint64_t address) override;
  void set_intx_gsi(uint32_t gsi) override;
  // Returns once the BARs queued for peer-to-peer DMA are in the IOMMU (or refused). Not while the device
  // may be disconnected (tests use it).
  void wait_peer_dma();
  // The machine's PCI windows once they are final (the IOMMU's reach is known after the devices open).
  void set_windows(const layout::PciWindows& windows);
  std::string name() const override { return name_; }
  std::string stats() const override;
  // Takes the device away from the guest: interrupts off, decoding and bus mastering off, BAR traps,
  // memory slots and peer-to-peer mappings gone (the first steps of teardown, README.md). What is left
  // for the destructor is the slow part, the hand-over and vfio-pci's reset, which then needs no paused
  // vCPUs: nothing of the guest's reaches the device any more. For hot-unplug, with the vCPUs paused and
  // the device already off the bus. Config and BAR accesses must not arrive after it.
  void disconnect();

  // Accesses to the trapped parts of BAR `bar` (offset inside the BAR); public for the bus glue and tests.
  void bar_read(int bar, uint64_t offset, std::span<uint8_t> data) override;
  void bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) override;

  // The plan of each BAR (empty for unimplemented ones), for tests and the exit report.
  const BarLayout& bar_layout(int bar) const { return bars_->layout(bar); }
  const CapabilityPlan& capabilities() const { return caps_; }
  // How the device was reset when opened ("flr", ...), "" when it has no reset.
  const std::string& reset_method() const { return reset_method_; }

  // Trapped BAR accesses are split so the data path can be audited: `mmio` counts only ordinary
  // registers forwarded by passvm (a sparse mapping should keep these at 0 while the device works),
  // `msix` the accesses to the MSI-X table and PBA, which are emulated and expected.
  struct Counters {
    std::atomic<uint64_t> config_reads{0}, config_writes{0}, pio{0};
    // How long the guest's bus master enable waited for guest RAM's DMA mapping (dma_ready.h).
    std::atomic<uint64_t> bus_master_wait_us{0};
    std::array<std::atomic<uint64_t>, 6> mmio{}, msix{};
  };
  const Counters& counters() const { return counters_; }
  // BAR and ROM placements left unmapped (outside the windows, over another BAR, refused by KVM).
  uint64_t refused_placements() const;
  // MSI routes made and interrupts that arrived on masked vectors, over MSI and MSI-X.
  uint64_t vectors_routed() const;
  uint64_t masked_interrupts() const;
  // Host vectors the device has for MSI-X now: only those the guest unmasked.
  uint32_t msix_host_vectors() const;

 private:
  void setup();
  bool msix_fits(const std::vector<uint8_t>& raw, uint32_t cap) const;  // table and PBA inside their BARs
  void setup_msix(const std::vector<uint8_t>& raw);
  void teardown();
  void disconnect_locked();  // steps 1-4 of teardown without the watcher, with lock_ held
  void report_reset();
  void device_config_read(uint32_t offset, std::span<uint8_t> out);
  void device_config_write(uint32_t offset, std::span<const uint8_t> in);
  uint8_t virtual_byte(uint32_t offset);  // with lock_ held
  uint32_t hold_bus_master(uint32_t offset, uint32_t value);
  void msi_written();
  void msix_control_written();
  enum class Part { Device, Table, Pba };
  // Calls fn(part, offset, length, position in the access) for each run of bytes one part owns.
  template <typename Fn>
  void for_each_part(int bar, uint64_t offset, uint64_t len, Fn fn) const;
  void count_access(int bar, uint64_t offset, uint64_t len);

  std::unique_ptr<vfio::Device> dev_;
  std::unique_ptr<Platform> platform_;
  PassthruOptions options_;
  std::string name_;
  mutable std::mutex lock_;
  // The device's own accesses that failed (vfio-pci refuses those of a device out of D0): the guest can
  // repeat them at will.
  WarningLimit access_errors_{name_, "failed device accesses", "access errors"};

  // The config view: bytes passvm owns read from shadow_ (or the component that owns them).
  uint32_t config_size_ = 256;
  std::vector<uint8_t> shadow_;
  std::vector<bool> emulated_;
  CapabilityPlan caps_;
  uint16_t command_ = 0;
  // In D0 (the PM capability's power state; true without one). A device in D3hot decodes no memory:
  // vfio-pci refuses its BAR accesses and unmaps their pages, which a KVM memory slot would turn into
  // a stopped VM, so its BARs leave the guest as when memory decoding is off.
  bool powered_ = true;
  uint16_t decoding_command() const { return powered_ ? command_ : static_cast<uint16_t>(command_ & ~2u); }
  void read_power_state();  // with lock_ held
  std::optional<MsiCapability> msi_;
  // MSI-X: the guest's table, where it and the PBA live, and the control word's two bits.
  std::unique_ptr<MsixTable> msix_;
  int msix_table_bar_ = -1, msix_pba_bar_ = -1;
  uint64_t msix_table_offset_ = 0, msix_pba_offset_ = 0;

  std::unique_ptr<BarMapper> bars_;
  std::unique_ptr<Interrupts> irqs_;
  std::string reset_method_;
  Counters counters_;
};

// Opens `bdf` (any form vfio::Bdf::parse takes) in the container and builds its passthrough device on the
// machine's Vm and buses. Throws vfio::VfioError (or std::runtime_error) with a one-line message for the user.
std::unique_ptr<PassthruDevice> open_passthru(const std::string& bdf, vfio::Container& container, Vm& vm, Bus& pio,
                                              Bus& mmio, PassthruOptions options = {});
// The same for a device already opened from the container (the machine opens several side by side).
std::unique_ptr<PassthruDevice> open_passthru(std::unique_ptr<vfio::Device> device, Vm& vm, Bus& pio, Bus& mmio,
                                              PassthruOptions options = {});

}  // namespace passvm::passthru
