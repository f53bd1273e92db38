// passthru: the device's BARs and expansion ROM in the guest's address space.
//
// Each BAR is planned once (bar_layout.h): the pages the transport lets us mmap are
// mmapped into passvm at start and become KVM memory slots wherever the guest places the
// BAR, so the data path has no exits; the rest (the pages of the MSI-X table and PBA, I/O
// BARs, areas the transport will not map) are traps whose accesses go to the handler.
// The BAR registers (config 0x10-0x27) and the ROM register (0x30) are the guest's:
// kept here, never written to the device. A BAR is in the guest exactly while its
// decode bit is on and its address is acceptable: inside a PCI window of the machine
// and over no other BAR of the device. With peer-to-peer DMA on, the same pages are
// mapped into the IOMMU at the BAR's guest address while it is in the guest, so that
// another device's DMA to that address lands in this device (as it would on the host);
// the mapping is made off the guest's path (peer_dma.h), and an IOMMU that refuses is a
// warning, not a failed start.
//
// Lifetime: owned by PassthruDevice and called under its lock (the traps call the handler
// without it). The transport, the platform and the handler outlive it. The destructor
// (or unmap_all) removes slots and traps, unmaps the ROM and the host mmaps.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "memory/layout.h"
#include "passthru/bar_layout.h"
#include "passthru/peer_dma.h"
#include "passthru/platform.h"
#include "passthru/rom.h"
#include "passthru/warning_limit.h"
#include "pci/pci_device.h"
#include "vfio/device.h"

namespace passvm::passthru {

class BarMapper {
 public:
  // Where trapped accesses go (offsets inside the BAR).
  class AccessHandler {
   public:
    virtual void bar_read(int bar, uint64_t offset, std::span<uint8_t> data) = 0;
    virtual void bar_write(int bar, uint64_t offset, std::span<const uint8_t> data) = 0;

   protected:
    ~AccessHandler() = default;
  };
  // An area of a BAR that must be trapped whatever the transport allows (the MSI-X table, the PBA).
  struct TrappedArea {
    int bar;
    vfio::Area area;
  };

  // windows: where the guest may place BARs; nullopt accepts any address (tests).
  // verbose: say how long each BAR took to map (stderr). peer_dma: where to map BARs for peer-to-peer DMA,
  // or nullptr.
  BarMapper(vfio::Device& dev, Platform& platform, std::string name, AccessHandler& handler,
            std::optional<layout::PciWindows> windows, bool verbose = false, vfio::DmaMapper* peer_dma = nullptr);
  ~BarMapper();
  BarMapper(const BarMapper&) = delete;
  BarMapper& operator=(const BarMapper&) = delete;

  // Reads each BAR's kind and size from the device, plans it and mmaps what can be mapped.
  void scan(std::span<const TrappedArea> must_trap, uint64_t page_size);
  void set_rom(std::unique_ptr<RomBar> rom) { rom_ = std::move(rom); refresh_rom_register(); }
  // Before the BARs are placed: where they may go.
  void set_windows(const layout::PciWindows& windows) { windows_ = windows; }

  std::vector<pci::BarRequest> requests() const;
  // The PCI root's placement (index kRomBarIndex: the ROM, placed but not enabled).
  void assign(int index, uint64_t address);

  // Config bytes 0x10-0x27 and 0x30-0x33.
  static bool is_register(uint32_t offset) { return (offset >= 0x10 && offset < 0x28) || (offset >= 0x30 && offset < 0x34); }
  uint8_t read_register(uint32_t offset) const { return regs_[offset - 0x10]; }
  // Bytes the guest wrote at `offset` (only the register bytes among them count).
  void write_registers(uint32_t offset, std::span<const uint8_t> bytes);
  // The command register's decode bits (I/O: bit 0, memory: bit 1) decide what is mapped.
  void set_command(uint16_t command);

  bool exists(int bar) const { return bars_.at(static_cast<size_t>(bar)).index == bar; }
  bool is_io(int bar) const { return bars_.at(static_cast<size_t>(bar)).kind == pci::BarKind::Io; }
  const BarLayout& layout(int bar) const { return bars_.at(static_cast<size_t>(bar)).layout; }
  uint64_t remaps() const { return remaps_; }
  // Placements passvm could not map, and BARs the IOMMU refused for peer-to-peer DMA.
  uint64_t refused() const;
  // Returns once the BAR areas queued for peer-to-peer DMA are in the IOMMU (peer_dma.h).
  void wait_peer_dma();
  // Every BAR out of the IOMMU and no more peer-to-peer mapping, before the device stops decoding: the
  // kernel's vfio-pci does not let memory decoding change while a map of the device's memory is in
  // progress, so a command register write would wait for the whole of it (minutes for 64 GiB in the lab).
  void stop_peer_dma();

  // Everything out of the guest and out of passvm's address space; a BAR's pages that a memory slot KVM
  // would not delete still points at stay mapped in passvm (so nothing else is ever placed there).
  void unmap_all();

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
    std::vector<void*> host;  // mmap of each mapped area
    std::vector<std::unique_ptr<Trap>> traps;
    std::unique_ptr<Trap> page_trap;  // a whole-page BAR placed where its page cannot be mapped
    bool page_trapped = false;
    bool page_shared = false;   // trapped because something else was in its page (not for a refused slot)
    bool tail_claimed = false;  // mapped as a whole page: the page's rest is held on the bus (tail_)
    std::optional<uint64_t> mapped_at;  // guest address it is mapped at now
    std::vector<uint32_t> slots;
    std::vector<vfio::Area> dma;  // iova ranges mapped for peer-to-peer DMA
  };

  void map_into_host(Bar& b);
  void refresh_register(const Bar& b);
  void refresh_rom_register();
  void update();
  void update_rom();
  bool acceptable(const Bar& b, uint64_t address) const;
  void map(Bar& b, uint64_t address);
  // Takes b out of the guest; false when KVM kept one of its memory slots. Then b stays where it was,
  // traps and all, and a later change tries again (as the ROM does); `for_good` (the teardown) takes
  // its traps off the bus anyway, and the slots KVM kept stay in b.slots.
  bool unmap(Bar& b, bool for_good = false);
  std::string map_for_peers(Bar& b, uint64_t address);
  bool page_is_ours(const Bar& b, uint64_t address);
  // Where b is or is about to be in guest memory: mapped, or to be mapped (decoding on); none for I/O.
  std::optional<uint64_t> memory_placement(const Bar& b) const;
  // Whether the command register has b's kind of decoding (I/O or memory) on.
  bool decoding(const Bar& b) const { return command_ & (b.kind == pci::BarKind::Io ? 1 : 2); }
  // Whether another BAR of this device is or is about to be in the page at `address`.
  bool another_bar_in_page(const Bar& b, uint64_t address) const;
  void trap_whole_page_bar(Bar& b, uint64_t address, bool shared);

  vfio::Device& dev_;
  Platform& platform_;
  std::string name_;
  AccessHandler& handler_;
  std::optional<layout::PciWindows> windows_;
  bool verbose_;
  // The destructor's unmap_all() takes every BAR out of the IOMMU through it before it unmaps the host
  // pages behind them; the worker itself goes with the members, after that.
  std::unique_ptr<PeerDma> peers_;
  uint64_t page_size_ = 4096;
  // The rest of the page of a BAR mapped as a whole page, on the MMIO bus: the memory slot hides
  // whatever else would be there, so this claim makes a later trap there fail loudly instead.
  struct PageTail final : BusDevice {
    void read(uint64_t, std::span<uint8_t> data) override { std::fill(data.begin(), data.end(), uint8_t{0xff}); }
    void write(uint64_t, std::span<const uint8_t>) override {}
  };
  PageTail tail_;
  std::array<Bar, 6> bars_;
  std::unique_ptr<RomBar> rom_;
  std::array<uint8_t, 0x24> regs_{};  // config 0x10-0x33 as the guest reads it
  uint16_t command_ = 0;
  uint64_t remaps_ = 0;
  uint64_t peers_refused_ = 0;  // peers_->refused() when peer-to-peer DMA stopped
  // A guest that keeps misplacing a BAR must not flood the host's logs (warning_limit.h).
  WarningLimit refusals_{name_, "placements passvm cannot map", "refused"};
  void refuse(const std::string& what) { refusals_.say(what); }
  // -v's report of each placement: a guest moving its BARs in a loop must not flood the logs either.
  WarningLimit placements_said_{name_, "BAR placements", "remaps", 64};
};

}  // namespace passvm::passthru
