// vfio: the device side of PCI passthrough, independent of how the device is reached.
//
// A passthrough device is a set of regions (BARs, expansion ROM, config space),
// a set of interrupt sources (INTx, MSI, MSI-X) and a reset, done when it is opened. The kernel's VFIO
// (linux_vfio.h) is one way to reach them; vfio-user (a device in another
// process, over a socket) is another with the very same model. Everything above
// this layer talks to Device and DmaMapper only, so a second transport plugs in
// without touching the passthrough logic. Region and IRQ indices are the ones of
// the VFIO PCI ABI (VFIO_PCI_BAR0_REGION_INDEX ..., VFIO_PCI_INTX_IRQ_INDEX ...),
// which vfio-user shares.
#pragma once

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <linux/vfio.h>

namespace passvm::vfio {

// Every failure the user can do something about; the message is one line naming device and fix.
class VfioError : public std::runtime_error {
 public:
  explicit VfioError(const std::string& message, int err = 0) : std::runtime_error(message), errno_(err) {}
  int error_number() const { return errno_; }

 private:
  int errno_;
};

// A piece of a region that may be mmapped; offsets relative to the region.
struct Area {
  uint64_t offset;
  uint64_t size;
  bool operator==(const Area&) const = default;
};

struct RegionInfo {
  uint32_t index = 0;
  uint64_t size = 0;  // 0: the region does not exist (an unimplemented BAR)
  bool readable = false;
  bool writable = false;
  bool mmappable = false;
  // When the kernel gives a sparse-mmap capability, only these areas may be mmapped.
  bool has_sparse = false;
  std::vector<Area> sparse;
  // The kernel allows mmapping over the MSI-X table (the device can only raise what the host programmed).
  bool msix_mappable = false;
};

struct IrqInfo {
  uint32_t index = 0;
  uint32_t count = 0;  // vectors; 0 when the device has no such interrupt
  bool eventfd = false;
  bool maskable = false;
  bool automasked = false;  // level interrupt the host masks on delivery (INTx): needs an unmask
  // The number of vectors is fixed while the interrupt is on: adding one means disabling and enabling
  // again with the larger count (MSI-X on kernels without dynamic allocation).
  bool noresize = false;
};

enum class IrqAction { Trigger, Unmask, Mask };

class Device {
 public:
  virtual ~Device() = default;

  // "0000:00:03.0" for a kernel device.
  virtual std::string name() const = 0;
  virtual uint32_t num_regions() const = 0;
  virtual uint32_t num_irqs() const = 0;
  virtual RegionInfo region_info(uint32_t index) const = 0;

  // Accesses through the transport (a syscall each). Throws VfioError when the access fails.
  virtual void read(uint32_t region, uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void write(uint32_t region, uint64_t offset, std::span<const uint8_t> data) = 0;

  // Maps [offset, offset+size) of a region into passvm's address space, shared with the device.
  // Returns nullptr when the transport cannot map it (the caller then traps the range).
  virtual void* map(uint32_t region, uint64_t offset, uint64_t size) = 0;
  virtual void unmap(void* address, uint64_t size) = 0;

  virtual IrqInfo irq_info(uint32_t index) const = 0;
  // Connects eventfds to vectors [start, start + fds.size()) of an interrupt; fd -1 disconnects one.
  // Trigger: the device signals the fd. Unmask: a signal on the fd unmasks the (automasked) vector.
  virtual void set_irq_eventfds(uint32_t index, IrqAction action, uint32_t start, std::span<const int> fds) = 0;
  // Turns an interrupt source off entirely (all vectors).
  virtual void disable_irq(uint32_t index) = 0;
  // Unmasks vectors without an eventfd (after the INTx line was serviced by passvm itself).
  virtual void unmask_irq(uint32_t index, uint32_t start, uint32_t count) = 0;

  // The transport resets a device when it opens it (vfio-pci does, for its first user). This says how:
  // "flr", "pm", "bus", ..., or "" when the device cannot be reset and keeps the state it was left in
  // (the caller reports that; it is not an error on its own).
  virtual std::string reset_method() const = 0;
  // When reset_method() is "": why no reset at all was possible, for the user ("" when unknown).
  virtual std::string no_reset_reason() const { return {}; }
};

// Memory a device may reach by DMA: `size` bytes at guest-physical `iova`, which passvm has at `host`. A
// transport whose device lives in another process (vfio-user) cannot use passvm's pointers: it shares the
// memory as a file, `fd` at `fd_offset` (-1 when the memory has no file: such a transport cannot map it).
// [start, last], both inclusive, as VFIO gives them.
struct IovaRange {
  uint64_t start = 0, last = 0;
};

struct DmaRegion {
  uint64_t iova = 0, size = 0;
  void* host = nullptr;
  int fd = -1;
  uint64_t fd_offset = 0;
};

// Large mappings go to the IOMMU in pieces that keep to 1 GiB boundaries of the iova: the IOMMU can use
// its largest pages inside each piece, and a stop or an unmap waits for one piece, not the whole.
inline constexpr uint64_t kDmaPiece = uint64_t{1} << 30;
// The size of the piece that starts at `iova`, with `left` bytes still to map.
inline uint64_t dma_piece(uint64_t iova, uint64_t left) {
  return left < kDmaPiece - iova % kDmaPiece ? left : kDmaPiece - iova % kDmaPiece;
}

// The IOMMU side: guest-physical addresses the device may reach (iova) and the host memory behind them.
class DmaMapper {
 public:
  virtual ~DmaMapper() = default;
  // Throws VfioError (with error_number() set to the errno) when the mapping cannot be made.
  virtual void map_dma(const DmaRegion& region) = 0;
  virtual void unmap_dma(uint64_t iova, uint64_t size) = 0;
  // One past the highest address the IOMMU can map (its address width), or 0 when unknown. The guest's
  // RAM and BARs must stay below it for devices to reach them.
  virtual uint64_t iova_limit() {
    auto ranges = iova_ranges();
    return ranges.empty() ? 0 : (ranges.back().last == ~uint64_t{0} ? ~uint64_t{0} : ranges.back().last + 1);
  }
  // The addresses the IOMMU can map, in order; what lies between them the host reserves (the MSI window,
  // AMD's HyperTransport hole, firmware's regions). Empty when unknown.
  virtual std::vector<IovaRange> iova_ranges() { return {}; }
};

}  // namespace passvm::vfio
