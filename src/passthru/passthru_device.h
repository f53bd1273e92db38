// passthru: the passthrough PCI device the guest sees in its slot.
//
// Config space is the device's own, read and written through the transport,
// except the registers passvm virtualizes: BARs (the guest's addresses, sizes
// from the transport), the expansion ROM (rom.h), the interrupt line, the
// header type's multi-function bit, MSI and MSI-X capabilities (emulated,
// per-vector masking included: a masked vector's interrupt waits as a pending
// bit, see vectors.h) and capability links (capabilities.h). The command register goes to the device;
// its decode bits also decide whether BARs are mapped into the guest.
//
// Lifetime: the constructor reports how vfio-pci reset the device when it was
// opened (stderr) and stops what a reset left running (handover.h),
// and the destructor undoes everything on every path: bus mastering off,
// interrupts off, memory slots and traps removed, transport closed, which makes
// vfio-pci reset the device. DMA belongs to the
// container and is mapped once for all devices: see dma.h.
//
// Thread safety: config accesses, trapped BAR accesses and the interrupt
// watcher may run on different threads at once; one lock serializes the
// device's virtual state.
#pragma once

#include <array>
#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bus/bus.h"
#include "kvm/vm.h"
#include "passthru/bar_layout.h"
#include "passthru/capabilities.h"
#include "passthru/msix_table.h"
#include "passthru/platform.h"
#include "passthru/rom.h"
#include "passthru/vectors.h"
#include "pci/pci_device.h"
#include "vfio/device.h"
#include "vfio/linux_vfio.h"

namespace passvm::passthru {

struct PassthruOptions {
  // Watch masked vectors on a thread of the device's own. Tests turn it off and read the PBA instead.
  bool watcher_thread = true;
  // Where guest BARs may live (layout.h windows); a BAR moved outside is left unmapped with a warning.
  bool check_windows = true;
  // The expansion ROM the guest sees comes from this file instead of the device (bhyve's rom=).
  std::string rom_file{};
};

class PassthruDevice final : public pci::PciDevice {
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
  std::string name() const override { return name_; }
  std::string stats() const override;

  // Accesses to the trapped parts of BAR `bar` (offset inside the BAR); public for the bus glue and tests.
  void bar_read(int bar, uint64_t offset, std::span<uint8_t> data);
  void bar_write(int bar, uint64_t offset, std::span<const uint8_t> data);

  // The plan of each BAR (empty for unimplemented ones), for tests and the exit report.
  const BarLayout& bar_layout(int bar) const { return bars_.at(static_cast<size_t>(bar)).layout; }
  const CapabilityPlan& capabilities() const { return caps_; }
  // How the device was reset when opened ("flr", ...), "" when it has no reset.
  const std::string& reset_method() const { return reset_method_; }

  // Trapped BAR accesses are split so the data path can be audited: `mmio` counts only ordinary
  // registers forwarded by passvm (a sparse mapping should keep these at 0 while the device works),
  // `msix` the accesses to the MSI-X table and PBA, which are emulated and expected.
  struct Counters {
    std::atomic<uint64_t> config_reads{0}, config_writes{0}, pio{0}, remaps{0}, refused{0};
    std::array<std::atomic<uint64_t>, 6> mmio{}, msix{};
  };
  const Counters& counters() const { return counters_; }
  // MSI routes made and interrupts that arrived on masked vectors, over MSI and MSI-X.
  uint64_t vectors_routed() const;
  uint64_t masked_interrupts() const;

 private:
  struct Trap;
  struct Bar {
    int index = -1;
    pci::BarKind kind = pci::BarKind::Mmio32;
    uint64_t size = 0;
    bool prefetchable = false;
    uint32_t flags = 0;  // low bits of the BAR register
    uint64_t address = 0;
    BarLayout layout;
    std::vector<void*> host;               // mmap of each mapped area (nullptr: trapped instead)
    std::vector<std::unique_ptr<Trap>> traps;
    std::optional<uint64_t> mapped_at;      // guest address it is mapped at now
    std::vector<uint32_t> slots;
  };

  void setup();
  void teardown();
  void scan_bars();
  void map_bars_into_host();
  bool decoding(const Bar& b) const;
  void update_mappings();  // with lock_ held
  void map_bar(Bar& b, uint64_t address);
  void unmap_bar(Bar& b);
  bool address_acceptable(const Bar& b, uint64_t address) const;
  void write_bar_register(uint32_t offset, int size, uint32_t value);
  void write_rom_register(uint32_t offset, int size, uint32_t value);
  void update_rom_mapping();
  void refresh_bar_shadow(Bar& b);
  void msi_write(uint32_t offset, int size, uint32_t value);
  void msix_control_write(uint32_t offset, int size, uint32_t value);
  void apply_msi();
  uint32_t msi_mask_offset() const;
  uint32_t msi_pending_offset() const;
  void refresh_msi_pending();  // with lock_ held
  bool start_vectors(uint32_t index, Vectors& vectors, uint32_t count, bool& enabled);
  void stop_vectors(uint32_t index, Vectors& vectors, bool& enabled);
  void apply_msix_vector(uint32_t i);
  void enable_intx();
  void disable_intx();
  void device_config_read(uint32_t offset, std::span<uint8_t> out);
  void device_config_write(uint32_t offset, std::span<const uint8_t> in);
  void watch();
  bool is_msix_structure(int bar, uint64_t offset, uint64_t len) const;
  enum class Part { Device, Table, Pba };
  // Calls fn(part, offset, length, position in the access) for each run of bytes one part owns.
  template <typename Fn>
  void for_each_part(int bar, uint64_t offset, uint64_t len, Fn fn) const;
  void count_access(int bar, uint64_t offset, uint64_t len);
  void report_reset();

  std::unique_ptr<vfio::Device> dev_;
  std::unique_ptr<Platform> platform_;
  PassthruOptions options_;
  std::string name_;
  uint64_t page_size_;
  mutable std::mutex lock_;

  uint32_t config_size_ = 256;
  std::vector<uint8_t> shadow_;     // the guest's view of virtual bytes
  std::vector<bool> emulated_;      // byte is virtual (shadow_), else the device's
  CapabilityPlan caps_;
  std::array<Bar, 6> bars_;
  std::unique_ptr<RomBar> rom_;  // the expansion ROM, when the device or a rom= file has one
  uint16_t command_ = 0;

  // MSI: the capability's layout and state.
  uint32_t msi_size_ = 0;
  bool msi_64_ = false, msi_per_vector_ = false, msi_enabled_ = false;
  // MSI-X
  std::unique_ptr<MsixTable> msix_;
  int msix_table_bar_ = -1, msix_pba_bar_ = -1;
  uint64_t msix_table_offset_ = 0, msix_pba_offset_ = 0;
  bool msix_enabled_ = false, msix_masked_ = false;

  int epoll_fd_ = -1, stop_fd_ = -1;
  std::thread watcher_;
  std::unique_ptr<Vectors> msi_vectors_, msix_vectors_;

  // INTx: trigger and resample eventfds, wired while neither MSI nor MSI-X is on.
  std::optional<uint32_t> intx_gsi_;
  int intx_fd_ = -1, intx_resample_fd_ = -1;
  bool intx_on_ = false;

  std::string reset_method_;
  Counters counters_;
};

// Opens `bdf` (any form vfio::Bdf::parse takes) in the container and builds its passthrough device on the
// machine's Vm and buses. Throws vfio::VfioError (or std::runtime_error) with a one-line message for the user.
std::unique_ptr<PassthruDevice> open_passthru(const std::string& bdf, vfio::Container& container, Vm& vm, Bus& pio,
                                              Bus& mmio, PassthruOptions options = {});

}  // namespace passvm::passthru
