#include "vmm/machine.h"
#include "base/eprint.h"
#include "vmm/console_hint.h"

#include <fmt/format.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <map>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <utility>

#include "acpi/tables.h"
#include "boot/e820.h"
#include "boot/kernel_cache.h"
#include "boot/linux_boot.h"
#include "bus/bus.h"
#include "confine/seccomp.h"
#include "kvm/cpuid.h"
#include "devices/acpi_pm.h"
#include "devices/cmos_rtc.h"
#include "devices/console_input.h"
#include "devices/i8042.h"
#include "devices/pvpanic.h"
#include "devices/uart16550.h"
#include "virtio/console.h"
#include "virtio/mmio_transport.h"
#include "kvm/vcpu.h"
#include "kvm/vm.h"
#include "memory/guest_memory.h"
#include "memory/layout.h"
#include "passthru/dma_ready.h"
#include "passthru/passthru_device.h"
#include "pci/host_bridge.h"
#include "pci/hotplug.h"
#include "pci/root.h"
#include "vfio/guest_dma.h"
#include "vfio/host_checks.h"
#include "vfio/linux_vfio.h"
#include "vmm/step_log.h"

namespace passvm {
namespace {

// A crash must not leave the user's terminal in raw mode: restore it, then die as the signal says.
std::atomic<devices::ConsoleInput*> g_console{nullptr};

void restore_terminal() {
  if (auto* c = g_console.load()) c->restore();
}

// Every MSI/MSI-X vector of a passthrough device is an eventfd: a device with hundreds of vectors (a
// GPU, a NIC's virtual function) would run into the usual soft limit of 1024 open files. The hard limit
// is ours to take.
void raise_open_file_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// What the host's Intel IOMMUs can address (their narrowest MGAW), 0 if there is none to ask. A machine
// that may get devices later keeps its 64-bit window below it, as one with devices at boot does.
uint64_t intel_iommu_reach() {
  uint64_t reach = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/sys/class/iommu", ec)) {
    std::ifstream f(e.path() / "intel-iommu" / "cap");
    std::string hex;
    if (!(f >> hex)) continue;
    uint64_t cap = std::stoull(hex, nullptr, 16);
    uint64_t bits = ((cap >> 16) & 0x3f) + 1;
    if (bits >= 64) continue;
    uint64_t r = uint64_t{1} << bits;
    reach = reach == 0 ? r : std::min(reach, r);
  }
  return reach;
}

int key(int slot, int func) { return slot * pci::kFunctions + func; }

}  // namespace

uint64_t host_memory_bytes() {
  FILE* f = fopen("/proc/meminfo", "re");
  if (!f) return 0;
  unsigned long long kb = 0;
  if (fscanf(f, "MemTotal: %llu kB", &kb) != 1) kb = 0;
  fclose(f);
  return kb * 1024;
}

struct Machine::Parts {
  struct Passthru {
    SlotConfig config;
    std::unique_ptr<passthru::PassthruDevice> dev;
  };

  Parts(const MachineConfig& c, Options o) : cfg(c), opts(std::move(o)), step(c.verbose) {
    if (opts.on_guest_exit) guest.on_request(opts.on_guest_exit);
  }
  ~Parts() { finish_ram_mapping(true); }  // before any part it uses goes

  MachineConfig cfg;
  Options opts;
  StepLog step;  // outlives every other part, so it can time the VM's closing
  ExitControl guest;
  // Guest RAM is declared before the VM so that it is unmapped only once the VM (whose memory slots
  // point into it) is closed.
  std::unique_ptr<GuestMemory> mem;
  std::unique_ptr<Kvm> kvm;
  std::unique_ptr<Vm> vm;
  // The kernel goes into guest RAM on a thread of its own while devices open and RAM is pinned for DMA
  // (unpacking a kernel's first boot takes as long as the rest of the setup). Declared after mem: on a
  // failed setup it is told to stop and joined before guest RAM goes.
  struct KernelLoad {
    std::optional<boot::KernelImage> image;
    boot::Initrd initrd;
    std::atomic<bool> stop{false};
    std::future<boot::LinuxBoot> result;
    double took_ms = 0;
    ~KernelLoad() {
      stop = true;
      if (result.valid()) result.wait();
    }
  } kernel_load;
  // Guest RAM allocated while the devices open, when devices given at boot need all of it pinned: pinning
  // then follows the allocation instead of waiting for the devices and then for the allocation.
  struct RamAhead {
    std::atomic<bool> stop{false};
    std::future<unsigned> threads;
    double took_ms = 0;
    ~RamAhead() {
      stop = true;
      if (threads.valid()) threads.wait();
    }
  };
  std::unique_ptr<RamAhead> ram_ahead;
  uint32_t phys_bits = 0;
  bool ht_hole = false;  // an AMD host: guest RAM and BARs stay out of 0xfd00000000-1 TiB (layout.h)
  layout::PciWindows windows;
  boot::LinuxBoot boot;
  Bus pio{"port I/O"}, mmio{"MMIO"};
  std::unique_ptr<devices::Uart16550> com1;
  // The transport first, so that the console goes first: it stops hearing from the output, whose writer
  // thread would otherwise reach the transport through it.
  std::unique_ptr<virtio::MmioTransport> hvc_transport;
  std::unique_ptr<virtio::Console> hvc;
  std::unique_ptr<devices::AcpiPm> pm;
  devices::CmosRtc rtc{devices::CmosRtc::host_clock,
                       [this](bool level) { vm->set_irq_line(layout::kRtcIrq, level); }};
  std::unique_ptr<devices::I8042> i8042;
  std::unique_ptr<devices::Pvpanic> pvpanic;
  std::atomic<int64_t> panicked_at_ns{0};  // steady clock, when the guest said it panicked; 0 before
  devices::PostPort post;
  std::unique_ptr<pci::PciRoot> root;
  pci::HostBridge bridge;
  std::unique_ptr<pci::PciHotplug> hotplug;
  uint32_t hotplug_slots = 0;
  vfio::Container container;
  // Declared before the devices so that it is destroyed after them: devices stop and reset while guest RAM
  // is still mapped, then the mapping goes.
  std::unique_ptr<vfio::GuestDmaMap> dma;
  // Guest RAM is pinned and mapped for DMA while the guest starts (passthru/dma_ready.h): the devices
  // given at boot hold the guest's bus master enable on dma_ready until ram_mapper has set dma. Both
  // outlive the devices; ram_mapper is joined before dma and the container go.
  passthru::DmaReady dma_ready;
  std::atomic<bool> ram_mapper_stop{false};
  std::thread ram_mapper;
  std::map<int, Passthru> passthru;  // by key(slot, func)
  std::vector<std::unique_ptr<Vcpu>> vcpus;
  std::unique_ptr<devices::ConsoleInput> console;
  bool started = false, stopped = false, paused = false;

  std::mutex eject_lock;
  uint32_t ejected = 0;  // a mask of slots: a guest writing B0EJ in a loop queues nothing

  void check_interrupted() {
    if (opts.interrupted && opts.interrupted()) throw SetupInterrupted{};
  }
  passthru::PassthruOptions device_options(const SlotConfig& s) {
    return {.windows = windows, .rom_file = s.rom, .verbose = cfg.verbose, .peer_dma = s.p2p ? &container : nullptr};
  }
  void build();
  void populate_ram();
  void map_guest_ram();
  void map_guest_ram_meanwhile();
  // Waits for the mapper started by map_guest_ram_meanwhile; with stop, makes it give up first (and frees
  // any vCPU whose bus master enable waits for it). dma is set afterwards if the mapping succeeded.
  void finish_ram_mapping(bool stop);
  void release_all();
};

void Machine::Parts::build() {
  const MachineConfig& c = cfg;
  signal(SIGPIPE, SIG_IGN);  // a closed console must not kill the VM: output errors are handled where written
  raise_open_file_limit();
  if (double age = c.verbose ? StepLog::process_age_ms() : -1; age >= 0)
    step.note(fmt::format("process started {:.0f} ms ago (libraries loaded, options parsed, confinement prepared)", age));

  uint64_t host_ram = host_memory_bytes();
  if (host_ram != 0 && c.memory > host_ram)
    throw std::runtime_error(fmt::format("-m {} MiB is more than this host's {} MiB of RAM: give a smaller -m",
                                         c.memory >> 20, host_ram >> 20));

  // KVM and RAM first: nothing else is worth building without them.
  if (c.cpus == 0) throw std::runtime_error("-c 0: a VM needs at least one vCPU");
  kvm = std::make_unique<Kvm>();
  if (c.cpus > kvm->max_vcpus())
    throw std::runtime_error(fmt::format("-c {}: this host's KVM allows at most {} vCPUs", c.cpus, kvm->max_vcpus()));
  vm = std::make_unique<Vm>(*kvm);
  vm->set_nested(c.nested);
  step("KVM VM with in-kernel interrupt controllers");
  check_interrupted();
  phys_bits = kvm->guest_phys_bits();
  ht_hole = host_has_ht_hole();
  mem = std::make_unique<GuestMemory>(c.memory, c.hugepages, phys_bits, ht_hole);
  if (mem->regions().size() > 1 && mem->regions()[1].gpa != layout::kHighRamStart)
    step.note(fmt::format("RAM above 4 GiB starts at {:#x}: from 4 GiB it would reach AMD's HyperTransport hole "
                          "({:#x}-{:#x}), which the IOMMU cannot map",
                          mem->regions()[1].gpa, layout::kHtHoleStart, layout::kHtHoleEnd - 1));
  // Above RAM, up to what the guest's physical address bits reach: large BARs (GPUs) need the room.
  // With passthrough devices the IOMMU's reach may be less; it is known once they are open.
  windows = layout::pci_windows(c.memory, phys_bits, 0, ht_hole);
  for (const auto& r : mem->regions()) vm->map_memory(r.gpa, r.size, r.hva);  // the VM's teardown drops the slots
  step(fmt::format("{} MiB of guest RAM on {}", c.memory >> 20, mem->backing()));
  if (!mem->small_pages_reason().empty())
    eprint("passvm: {}: guest RAM in 4 KiB pages (slower nested paging and DMA): {}\n", c.name,
               mem->small_pages_reason());

  // The kernel's files are opened and its header checked before any device is opened: a wrong path should
  // fail in milliseconds, not after seconds of device resets and pinning guest RAM. Loading it (unpacking,
  // or streaming it from the cache) then runs beside the rest of the setup, until the vCPUs need it.
  kernel_load.image = boot::KernelImage::open(c.kernel);
  boot::parse_setup_header(kernel_load.image->head(), kernel_load.image->size(), c.kernel);
  if (!c.initrd.empty()) kernel_load.initrd = boot::Initrd::file(c.initrd);
  kernel_load.result = std::async(std::launch::async, [this, e820 = boot::build_e820(*mem)] {
    auto start = std::chrono::steady_clock::now();
    boot::LinuxBoot b = boot::load_linux_image(*mem, *kernel_load.image, kernel_load.initrd, cfg.cmdline, e820,
                                               acpi::kRsdpAddress, cfg.kernel, cfg.unpack_on_host,
                                               boot::KernelCache::default_dirs(), &kernel_load.stop);
    kernel_load.took_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    // The bzImage's bytes are in guest RAM now: free them before guest RAM is all resident, which is when
    // passvm's memory peaks.
    kernel_load.image->release();
    return b;
  });
  step("kernel files opened; loading them into guest RAM meanwhile");

  auto irq = [this](uint32_t gsi) { return [this, gsi](bool level) { vm->set_irq_line(gsi, level); }; };

  // Legacy platform devices.
  if (c.com1 == "stdio") {
    com1 = std::make_unique<devices::Uart16550>(devices::standard_output(), irq(layout::kCom1Irq));
    pio.add(layout::kCom1Port, devices::Uart16550::kRegisterCount, com1.get());
  }
  if (c.virtio_console == "stdio") {
    static_assert(layout::kVirtioConsoleSize == virtio::MmioTransport::kSize);
    hvc = std::make_unique<virtio::Console>(devices::standard_output());
    hvc_transport = std::make_unique<virtio::MmioTransport>(*mem, *hvc, irq(layout::kVirtioConsoleIrq));
    hvc->attach(*hvc_transport);
    mmio.add(layout::kVirtioConsoleAddr, layout::kVirtioConsoleSize, hvc_transport.get());
  }
  pm = std::make_unique<devices::AcpiPm>([this] { guest.request(ExitReason::PowerOff); }, irq(layout::kAcpiSciIrq));
  pio.add(layout::kAcpiPmBase, devices::AcpiPm::kSize, pm.get());
  pio.add(layout::kRtcPort, devices::CmosRtc::kSize, &rtc);
  i8042 = std::make_unique<devices::I8042>(
      [this] { guest.request(ExitReason::Reset, "the guest reset the machine (i8042)"); });
  pio.add(0x60, devices::I8042::kSize, i8042.get());
  pio.add(0x80, 1, &post);
  if (c.pvpanic) {
    // A panicked guest that stopped there (panic=0) would spin a vCPU forever, and one that reboots
    // (panic=N) would only be seen to reset: either way the host learns of the panic, as from QEMU.
    pvpanic = std::make_unique<devices::Pvpanic>(
        [this] {
          panicked_at_ns = std::chrono::steady_clock::now().time_since_epoch().count();
          if (!opts.stop_on_panic)
            eprint("passvm: {}: the guest kernel panicked: {}; the VM goes on\n", cfg.name,
                       Machine::panic_detail());
        },
        [name = c.name] {
          eprint("passvm: {}: the guest kernel panicked and runs its crash kernel (kdump); the VM "
                     "goes on\n", name);
        });
    pio.add(layout::kPvpanicPort, devices::Pvpanic::kSize, pvpanic.get());
  }

  // The PCI bus.
  root = std::make_unique<pci::PciRoot>(
      [this] { guest.request(ExitReason::Reset, "the guest reset the machine (port 0xcf9)"); });
  pio.add(layout::kPciConfigAddrPort, 8, &root->config_io());
  mmio.add(layout::kEcamStart, layout::kEcamSize, &root->ecam());
  root->add(0, 0, &bridge);

  if (opts.hotplug) {
    // Every slot but those of emulated devices: a device given at boot may leave, and come back.
    hotplug_slots = ~1u;
    for (const auto& s : c.slots)
      if (s.emulation != "passthru" && s.slot < 32) hotplug_slots &= ~(1u << s.slot);
    hotplug = std::make_unique<pci::PciHotplug>([this] { pm->raise_gpe(devices::kGpePciHotplug); },
                                                [this](int slot) {
                                                  std::lock_guard g(eject_lock);
                                                  ejected |= 1u << slot;
                                                });
    pio.add(layout::kPciHotplugPort, pci::PciHotplug::kSize, hotplug.get());
  }

  // Passthrough devices share one container, so guest RAM is pinned and mapped into the IOMMU once.
  // Every device is checked before any is opened, so a wrong one fails before the others are reset.
  for (const auto& s : c.slots) {
    if (s.emulation != "passthru") continue;
    vfio::check_host_device(vfio::parse_bdf(s.config));
    if (!s.rom.empty() && access(s.rom.c_str(), R_OK) != 0)
      throw std::runtime_error(fmt::format("-s {},passthru,{},rom={}: cannot read the ROM file: {}", s.slot, s.config,
                                           s.rom, strerror(errno)));
  }
  // KVM learns of every group (hot-plugged ones too): its devices' interrupts can then be posted.
  container.on_group = [this, warned = false](int group_fd, bool added) mutable {
    if (!added) return vm->remove_vfio_group(group_fd);
    if (!vm->add_vfio_group(group_fd) && !std::exchange(warned, true))
      eprint("passvm: this kernel has no KVM-VFIO device (CONFIG_KVM_VFIO): passthrough works, but device "
             "interrupts are not posted to the vCPUs and DMA that does not snoop the CPU caches may see stale "
             "data\n");
  };
  // Every group first: a device that can only be reset with its bus needs the groups of all it resets.
  for (const auto& s : c.slots)
    if (s.emulation == "passthru") container.attach(vfio::parse_bdf(s.config));
  if (std::any_of(c.slots.begin(), c.slots.end(), [](const SlotConfig& s) { return s.emulation == "passthru"; })) {
    vfio::check_dma_reachable(container, *mem);  // before seconds of allocating what could not be pinned
    populate_ram();
  }
  // vfio-pci resets each device as it is opened (an FLR waits 100 ms): the container opens them side by
  // side; they are then built and put on the bus one after the other, in slot order.
  std::vector<vfio::Bdf> bdfs;
  for (const auto& s : c.slots)
    if (s.emulation == "passthru") bdfs.push_back(vfio::parse_bdf(s.config));
  auto opened = bdfs.empty() ? std::vector<std::unique_ptr<vfio::Device>>{} : container.open_devices(bdfs);
  if (opened.size() > 1) step(fmt::format("{} passthrough devices opened side by side", opened.size()));
  auto next_opened = opened.begin();
  for (const auto& s : c.slots) {
    if (s.emulation != "passthru") continue;
    passthru::PassthruOptions o = device_options(s);
    o.dma_ready = &dma_ready;
    auto dev = passthru::open_passthru(std::move(*next_opened++), *vm, pio, mmio, o);
    root->add(static_cast<int>(s.slot), static_cast<int>(s.func), dev.get());
    step(fmt::format("passthru {} in slot {}:{}", dev->name(), s.slot, s.func));
    passthru[key(static_cast<int>(s.slot), static_cast<int>(s.func))] = {s, std::move(dev)};
    check_interrupted();
  }
  uint64_t reach = passthru.empty() ? (opts.hotplug ? intel_iommu_reach() : 0) : container.iova_limit();
  if (reach != 0) {
    windows = layout::pci_windows(c.memory, phys_bits, reach, ht_hole);
    for (auto& [k, d] : passthru) d.dev->set_windows(windows);
    if (reach < (uint64_t{1} << phys_bits))
      step.note(fmt::format("the IOMMU reaches {:#x}, less than the CPU's {} bits: the 64-bit PCI window stays below "
                            "it", reach, phys_bits));
  }
  step.note(fmt::format("64-bit PCI window {:#x}-{:#x} ({}; {} physical address bits)", windows.mmio64.start,
                        windows.mmio64.end() - 1, layout::size_text(windows.mmio64.size), phys_bits));
  if (windows.mmio64.size == 0)
    throw std::runtime_error(fmt::format("-m {}M leaves no room for 64-bit PCI BARs below the IOMMU's limit of {:#x}: "
                                         "give a smaller -m", c.memory >> 20, windows.mmio64.start));
  acpi::build_tables(acpi::AcpiConfig{.vcpus = c.cpus,
                                      .windows = windows,
                                      .hotplug_slots = hotplug_slots,
                                      .virtio_console = hvc != nullptr,
                                      .pvpanic = pvpanic != nullptr},
                     *mem);
  if (!passthru.empty()) map_guest_ram_meanwhile();
  root->assign_resources(windows);
  for (const auto& a : root->assignments())
    step.note(fmt::format("00:{:02x}.{} {} at {:#x} ({:#x} bytes, {})", a.slot, a.func,
                          a.index == pci::kRomBarIndex ? std::string("ROM") : fmt::format("BAR{}", a.index), a.address,
                          a.size, a.kind == pci::BarKind::Io ? "I/O" : a.kind == pci::BarKind::Mmio64 ? "64-bit" : "32-bit"));

  boot = kernel_load.result.get();
  step(fmt::format("{} ({:.1f} ms beside the rest of the setup)",
                   boot.from_cache         ? "unpacked kernel loaded from the cache " + boot.cache_file
                   : boot.unpacked_on_host ? std::string("kernel unpacked and loaded")
                                           : fmt::format("kernel loaded; the guest decompresses it{}",
                                                         boot.unpack_note.empty() ? "" : " (" + boot.unpack_note + ")"),
                   kernel_load.took_ms));
  if (boot.unpacked_on_host)
    step.note(fmt::format("bzImage key {:.1f} ms, kernel {:.1f} ms{}", boot.key_ms, boot.kernel_ms,
                          boot.initrd_size == 0 ? std::string()
                                                : fmt::format(", initrd ({:.1f} MiB) {:.1f} ms",
                                                              static_cast<double>(boot.initrd_size) / (1 << 20),
                                                              boot.initrd_ms)));

  for (uint32_t i = 0; i < c.cpus; i++)
    vcpus.push_back(std::make_unique<Vcpu>(*vm, i, c.cpus, pio, mmio, guest, windows));
  vcpus[0]->setup_linux_boot(boot);
  // The ring for coalesced writes exists once a vCPU does; from here COM1's output may be batched.
  // A refusal is said once here as it happens; the UART keeps batching as it was and its state says why.
  if (com1)
    com1->set_tx_batching([this](bool on) {
      try {
        vm->coalesce_pio(layout::kCom1Port, 1, on);
      } catch (const std::exception& e) {
        eprint("passvm: COM1's transmit batching stays {}: {}\n", on ? "off" : "on", e.what());
        throw;
      }
    });
  step(fmt::format("{} vCPUs; setup took {:.1f} ms in all", c.cpus, step.total_ms()));
}

void Machine::Parts::populate_ram() {
  ram_ahead = std::make_unique<RamAhead>();
  ram_ahead->threads = std::async(std::launch::async, [this, r = ram_ahead.get()] {
    auto start = std::chrono::steady_clock::now();
    // The guest may run before the allocation ends (map_guest_ram_meanwhile): its threads confine themselves.
    unsigned n = mem->populate(0, &r->stop, [] { confine::enter(confine::ThreadClass::GuestRam, "pv-ram"); });
    r->took_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    return n;
  });
}

void Machine::Parts::map_guest_ram() {
  // Workers allocate guest RAM (from before the devices opened, or from now), and it is pinned for DMA
  // once they are done, not behind them: VFIO's type1 IOMMU takes the process's mm lock for writing for
  // every run of contiguous pages it pins (to charge them to RLIMIT_MEMLOCK), while each worker holds it
  // for reading through a chunk of its allocation, so the two stalled each other (in the lab, for an
  // 8 GiB guest: 4-5 s of waits for that lock alongside, 1-2 s one after the other; pinned sooner).
  if (!ram_ahead || !ram_ahead->threads.valid()) populate_ram();
  unsigned threads = ram_ahead->threads.get();  // a host short of memory fails here, before any pinning
  step.note(fmt::format("guest RAM allocated in {:.1f} ms ({} threads): {}", ram_ahead->took_ms, threads,
                        mem->page_usage().describe()));
  auto start = std::chrono::steady_clock::now();
  // A signal meanwhile (a large guest's first hot-plugged device) stops the pinning within a piece.
  try {
    dma = std::make_unique<vfio::GuestDmaMap>(container, *mem, opts.interrupted);
  } catch (const vfio::VfioError& e) {
    if (e.error_number() == ECANCELED) throw SetupInterrupted{};
    throw;
  }
  step(fmt::format("guest RAM mapped for DMA ({} MiB pinned in {:.1f} ms)", cfg.memory >> 20,
                   std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count()));
  check_interrupted();
}

void Machine::Parts::map_guest_ram_meanwhile() {
  if (!ram_ahead || !ram_ahead->threads.valid()) populate_ram();
  // The lab's check that a bus master enable really waits (passvm-devices): the mapping starts only once
  // one does.
  const char* hold = std::getenv("PASSVM_TEST_HOLD_DMA_MAP");
  ram_mapper = std::thread([this, hold = hold && *hold && std::strcmp(hold, "0") != 0] {
    try {
      confine::enter(confine::ThreadClass::GuestRam, "pv-ram-dma");
      unsigned threads = ram_ahead->threads.get();
      step.note(fmt::format("guest RAM allocated in {:.1f} ms ({} threads)", ram_ahead->took_ms, threads));
      if (hold && dma_ready.wait_for_a_waiter(std::chrono::minutes(5)))
        step.note("PASSVM_TEST_HOLD_DMA_MAP: a bus master enable waits; mapping guest RAM now");
      auto start = std::chrono::steady_clock::now();
      auto mapped = std::make_unique<vfio::GuestDmaMap>(container, *mem, [this] { return ram_mapper_stop.load(); });
      step.note(fmt::format("guest RAM mapped for DMA ({} MiB pinned in {:.1f} ms, beside the guest)",
                            cfg.memory >> 20,
                            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count()));
      dma = std::move(mapped);
      dma_ready.open();
    } catch (const std::exception& e) {
      dma_ready.fail(e.what());
      // A host short of memory (or of RLIMIT_MEMLOCK) stops the VM as a failed setup would have.
      if (!ram_mapper_stop.load())
        guest.request(ExitReason::SetupFailed, fmt::format("guest RAM cannot be mapped for DMA: {}", e.what()));
    }
  });
}

void Machine::Parts::finish_ram_mapping(bool stop) {
  if (!ram_mapper.joinable()) return;
  if (stop) {
    ram_mapper_stop = true;
    if (ram_ahead) ram_ahead->stop = true;
    dma_ready.fail("the machine stops");
  }
  ram_mapper.join();
}

void Machine::Parts::release_all() {
  finish_ram_mapping(true);
  if (passthru.empty()) return;
  std::vector<std::unique_ptr<passthru::PassthruDevice>> owned;
  for (auto& [k, d] : passthru) owned.push_back(std::move(d.dev));
  passthru.clear();
  // First every device stops mastering the bus (disconnect: bus master enable off, its interrupts and BARs
  // gone), a config write each. None reaches guest RAM after that, so guest RAM's DMA mapping goes while
  // they are reset: releasing a device makes vfio-pci reset it (an FLR alone waits 100 ms), and unpinning
  // takes about a second per 8 GiB in the lab. A device that masters the bus regardless finds its
  // addresses gone from the IOMMU (a fault the host logs), never host memory.
  for (auto& d : owned) d->disconnect();
  // Each device's teardown touches only its own state and the VM's locked tables.
  std::vector<double> took(owned.size());
  std::vector<std::string> names;
  std::vector<std::thread> releases;
  for (size_t i = 0; i < owned.size(); i++) {
    names.push_back(owned[i]->name());
    auto release = [&, i] {
      auto t0 = std::chrono::steady_clock::now();
      owned[i].reset();
      took[i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    };
    try {
      releases.emplace_back(release);
    } catch (const std::system_error&) {  // no thread to be had: release it here
      release();
    }
  }
  double unmap_ms = -1;
  if (dma) {
    auto t0 = std::chrono::steady_clock::now();
    dma.reset();
    unmap_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  for (auto& t : releases) t.join();
  step(fmt::format("{} passthrough device{} released side by side (vfio-pci resets them){}", names.size(),
                   names.size() == 1 ? "" : "s", unmap_ms < 0 ? "" : ", guest RAM unmapped from the IOMMU meanwhile"));
  for (size_t i = 0; i < names.size(); i++) step.note(fmt::format("{} released in {:.1f} ms", names[i], took[i]));
  if (unmap_ms >= 0) step.note(fmt::format("guest RAM unmapped from the IOMMU and unpinned in {:.1f} ms", unmap_ms));
}

Machine::Machine(const MachineConfig& config, Options options)
    : p_(std::make_unique<Parts>(config, std::move(options))) {
  p_->build();
}

Machine::~Machine() {
  stop();
  p_->release_all();
  p_->step.at_exit("VM closed and guest RAM freed");  // the log outlives every other part
}

void Machine::start() {
  Parts& p = *p_;
  if (p.started) return;
  p.started = true;  // first: vCPUs that did start must be stopped even if a later one cannot be
  // Input goes to the virtio console when there is one: a user who asked for it reads hvc0.
  devices::ConsoleSink* input = p.hvc ? static_cast<devices::ConsoleSink*>(p.hvc.get()) : p.com1.get();
  if (input) {
    p.console = std::make_unique<devices::ConsoleInput>(STDIN_FILENO, *input, [this] {
      if (p_->opts.on_console_quit) p_->opts.on_console_quit();
    });
    g_console = p.console.get();
    confine::die_of_crashes(restore_terminal);
  }
  for (auto& v : p.vcpus) v->start();
}

void Machine::stop() {
  Parts& p = *p_;
  if (!p.started || p.stopped) return;
  p.stopped = true;
  p.step("the guest ran");
  p.finish_ram_mapping(true);  // a vCPU may wait for it in a bus master enable
  for (auto& v : p.vcpus) v->kick();
  for (auto& v : p.vcpus) v->stop();
  p.step("vCPUs stopped");
  drain();
  if (p.console) p.console->stop();
  g_console = nullptr;
}

void Machine::pause() {
  if (!p_->started || p_->stopped || p_->paused) return;
  for (auto& v : p_->vcpus) v->pause();
  p_->paused = true;
}

void Machine::resume() {
  if (!p_->paused) return;
  for (auto& v : p_->vcpus) v->resume();
  p_->paused = false;
}

void Machine::drain() {
  p_->vm->drain_coalesced(p_->pio, p_->mmio);
  if (p_->com1) p_->com1->flush();
}

void Machine::tick() {
  p_->rtc.tick();
  const int64_t at = p_->panicked_at_ns.load();
  if (at != 0 && p_->opts.stop_on_panic &&
      std::chrono::steady_clock::now().time_since_epoch() - std::chrono::nanoseconds(at) >= kPanicGrace)
    p_->guest.request(ExitReason::GuestPanic, panic_detail());
}

bool Machine::guest_panicked() const { return p_->panicked_at_ns.load() != 0; }

std::string Machine::panic_detail() {
  return fmt::format("it said so through its pvpanic device (port {:#x})", layout::kPvpanicPort);
}

ExitControl& Machine::guest_exit() { return p_->guest; }

const MachineConfig& Machine::config() const { return p_->cfg; }

std::optional<int> Machine::slot_of(const std::string& id) const {
  for (const auto& [k, d] : p_->passthru)
    if (d.config.id == id) return static_cast<int>(d.config.slot);
  return std::nullopt;
}

std::vector<DeviceInfo> Machine::devices() const {
  std::vector<DeviceInfo> out;
  for (const auto& [k, d] : p_->passthru)
    out.push_back({d.config.id, guest_bdf(d.config.slot, d.config.func),
                   d.config.config});
  return out;
}

DeviceInfo Machine::add_device(SlotConfig s) {
  Parts& p = *p_;
  using Kind = ControlError::Kind;
  if (!p.hotplug) throw ControlError(Kind::WrongState, "this VM was started without hotplug slots");
  if (s.slot == SlotConfig::kAnySlot) {
    for (uint32_t slot = 1; slot < 32; slot++) {
      if ((p.hotplug_slots & (1u << slot)) && !p.root->device(static_cast<int>(slot), 0)) {
        s.slot = slot;
        break;
      }
    }
    if (s.slot == SlotConfig::kAnySlot)
      throw ControlError(Kind::Conflict, "every hotplug slot of the VM is taken: remove a device first");
  }
  s.func = 0;
  int slot = static_cast<int>(s.slot);
  if (s.slot >= 32 || !(p.hotplug_slots & (1u << s.slot)))
    throw ControlError(Kind::BadRequest, fmt::format("slot {} cannot take a hot-plugged device", s.slot));
  if (p.root->device(slot, 0))
    throw ControlError(Kind::Conflict, fmt::format("slot {} is taken by {}", slot, p.root->device(slot, 0)->name()));
  vfio::Bdf bdf;
  try {
    bdf = vfio::parse_bdf(s.config);
  } catch (const std::exception& e) {
    throw ControlError(Kind::BadRequest, e.what());
  }
  for (const auto& [k, d] : p.passthru)
    if (vfio::parse_bdf(d.config.config) == bdf)
      throw ControlError(Kind::Conflict, fmt::format("{} is already in this VM as {} (id {})", bdf.str(),
                                                     guest_bdf(d.config.slot, 0), d.config.id));
  auto t0 = std::chrono::steady_clock::now();
  p.step.mark();
  std::unique_ptr<passthru::PassthruDevice> dev;
  bool on_bus = false;
  // Whatever fails leaves the machine as it was: off the bus, closed, its group let go, and guest RAM
  // unmapped again if this was to be the first device.
  auto undo = [&] {
    bool was_paused = p.paused;
    if (on_bus) {
      pause();  // a vCPU may already be reading its config space
      p.root->remove(slot, 0);
    }
    dev.reset();
    if (on_bus && !was_paused) resume();
    if (p.passthru.empty()) p.dma.reset();
    p.container.detach(bdf);
  };
  try {
    p.finish_ram_mapping(false);  // guest RAM of devices given at boot may still be being mapped
    p.container.attach(bdf);
    // For the VM's first device (with guest RAM mapped already, VFIO refuses a conflicting group itself).
    vfio::check_dma_reachable(p.container, *p.mem);
    dev = passthru::open_passthru(bdf.str(), p.container, *p.vm, p.pio, p.mmio, p.device_options(s));
    if (!p.dma) p.map_guest_ram();
    p.step("device opened and guest RAM mapped for DMA");
    {
      // An eject the guest wrote for this slot while it was empty must not take the new device.
      std::lock_guard g(p.eject_lock);
      p.ejected &= ~(1u << slot);
    }
    p.root->add(slot, 0, dev.get());
    on_bus = true;
    p.root->route_intx(slot, 0);
  } catch (const SetupInterrupted&) {
    undo();
    throw ControlError(Kind::Failed, fmt::format("adding {} was interrupted", bdf.str()));
  } catch (const std::exception& e) {
    undo();
    throw ControlError(Kind::Failed, fmt::format("cannot add {}: {}", bdf.str(), e.what()));
  }
  passthru::PassthruDevice* raw = dev.get();
  p.passthru[key(slot, 0)] = {s, std::move(dev)};
  p.cfg.slots.push_back(s);
  p.hotplug->plug(slot);
  p.step(fmt::format("{} hot-plugged into slot {} in {:.1f} ms", raw->name(), slot,
                     std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count()));
  return {s.id, guest_bdf(s.slot, 0), bdf.str()};
}

bool Machine::press_power_button() { return p_->pm->press_power_button(); }

uint32_t Machine::send_nmi() {
  constexpr uint32_t kDeliveryNmi = 4 << 8;  // the MSI data's delivery mode; the vector is ignored
  uint32_t took = 0;
  // The APIC IDs are the vCPU indexes (the MADT says so), physical destination mode.
  for (uint32_t i = 0; i < p_->cfg.cpus; i++)
    took += p_->vm->signal_msi(layout::kLapicAddr | (uint64_t{i} << 12), kDeliveryNmi) ? 1 : 0;
  return took;
}

void Machine::request_unplug(int slot) {
  if (p_->hotplug) p_->hotplug->unplug_request(slot);
}

std::vector<int> Machine::take_ejected() {
  std::lock_guard g(p_->eject_lock);
  std::vector<int> slots;
  for (int slot = 0; slot < 32; slot++)
    if (p_->ejected & (1u << slot)) slots.push_back(slot);
  p_->ejected = 0;
  return slots;
}

void Machine::remove_device(int slot) {
  Parts& p = *p_;
  std::vector<int> keys;
  for (const auto& [k, d] : p.passthru)
    if (static_cast<int>(d.config.slot) == slot) keys.push_back(k);
  if (keys.empty()) return;
  p.finish_ram_mapping(false);  // the last device going takes guest RAM's mapping with it
  auto t0 = std::chrono::steady_clock::now();
  p.step.mark();
  // No vCPU may be inside the device's config space or BAR traps while it goes.
  bool was_paused = p.paused;
  pause();
  // Whatever happens below, a guest that ran runs again.
  struct ResumeAtEnd {
    Machine& m;
    bool resume;
    ~ResumeAtEnd() {
      if (resume) m.resume();
    }
  } resume_at_end{*this, !was_paused};
  std::vector<vfio::Bdf> hosts;
  std::vector<std::unique_ptr<passthru::PassthruDevice>> leaving;
  for (int k : keys) {
    auto& d = p.passthru[k];
    p.root->remove(slot, static_cast<int>(d.config.func));
    d.dev->disconnect();  // its DMA, interrupts, traps and BAR mappings stop while no vCPU can be inside
    hosts.push_back(vfio::parse_bdf(d.config.config));
    std::string id = d.config.id;
    leaving.push_back(std::move(d.dev));
    p.passthru.erase(k);
    std::erase_if(p.cfg.slots, [&](const SlotConfig& s) { return s.emulation == "passthru" && s.id == id; });
  }
  double paused_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (std::exchange(resume_at_end.resume, false)) resume();
  leaving.clear();  // the hand-over and vfio-pci's reset, with the guest running again
  // The last device takes guest RAM's DMA mapping with it: the IOMMU context ends with the last group.
  if (p.passthru.empty() && p.dma) p.dma.reset();
  for (const auto& b : hosts) p.container.detach(b);
  p.step(fmt::format("slot {} released in {:.1f} ms (vCPUs paused for {:.1f} ms of it)", slot,
                     std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(),
                     paused_ms));
}

Counters Machine::counters() const {
  Counters out;
  for (const auto& v : p_->vcpus) {
    auto s = v->stats();
    out[fmt::format("vcpu{}", v->index())] = {{"io_exits", s.io}, {"mmio_exits", s.mmio}, {"other_exits", s.other}};
  }
  for (const auto& [k, d] : p_->passthru) {
    const auto& c = d.dev->counters();
    uint64_t mmio = 0, msix = 0;
    for (const auto& m : c.mmio) mmio += m.load();
    for (const auto& m : c.msix) msix += m.load();
    out[d.config.id] = {{"config_reads", c.config_reads.load()},
                        {"config_writes", c.config_writes.load()},
                        {"pio", c.pio.load()},
                        {"mmio_trapped", mmio},
                        {"msix_table", msix},
                        {"vectors_routed", d.dev->vectors_routed()},
                        {"masked_interrupts", d.dev->masked_interrupts()},
                        {"msix_host_vectors", d.dev->msix_host_vectors()}};
  }
  return out;
}

// How many addresses --stats names.
constexpr size_t kBusiestSites = 12;

std::string Machine::silent_stop_hint() const {
  const uint64_t printed = (p_->com1 ? p_->com1->transmitted() : 0) + (p_->hvc ? p_->hvc->transmitted() : 0);
  if (printed > 0) return {};
  return passvm::silent_stop_hint({.com1 = p_->com1 != nullptr, .virtio_console = p_->hvc != nullptr},
                                  p_->cfg.cmdline);
}

std::string Machine::stats_text() const { return ram_stats_text() + device_stats_text(); }

std::string Machine::final_stats_text() {
  stop();
  std::string devices = device_stats_text();  // the devices' counters go with them
  p_->release_all();
  std::string text = ram_stats_text() + devices;
  // A step of its own (reading smaps takes tens of ms in a nested guest), so that the VM's closing,
  // timed from the last step, is not charged with it.
  p_->step("counters read for --stats");
  return text;
}

std::string Machine::ram_stats_text() const {
  return fmt::format("passvm: {} counters\n  guest RAM: {}\n", p_->cfg.name, p_->mem->page_usage().describe());
}

std::string Machine::device_stats_text() const {
  const Parts& p = *p_;
  std::string out;
  std::vector<std::vector<ExitSite>> sites;
  uint64_t unplaced = 0;
  for (const auto& v : p.vcpus) {
    auto s = v->stats();
    out += fmt::format("  vcpu{}: io exits {}, mmio exits {}, other exits {}\n", v->index(), s.io, s.mmio, s.other);
    sites.push_back(v->exit_sites().sites());
    unplaced += v->exit_sites().overflow();
  }
  // Who answers there, so that a reader need not know the machine's map.
  auto owner = [&p](const ExitSite& s) -> std::string {
    auto in = [&s](uint64_t base, uint64_t size) { return s.addr >= base && s.addr - base < size; };
    if (s.mmio) {
      if (in(layout::kEcamStart, layout::kEcamSize)) return "(PCI config, ECAM)";
      if (in(layout::kVirtioConsoleAddr, layout::kVirtioConsoleSize))
        return s.addr == layout::kVirtioConsoleAddr + 0x50 ? "(virtio console notify)" : "(virtio console)";
      // BARs where they were placed at start (a guest may move them).
      for (const auto& a : p.root->assignments())
        if (a.kind != pci::BarKind::Io && in(a.address, a.size))
          return fmt::format("(00:{:02x}.{} {})", a.slot, a.func,
                             a.index == pci::kRomBarIndex ? std::string("ROM") : fmt::format("BAR{}", a.index));
      return "";
    }
    static constexpr const char* kUartRegs[] = {"data", "IER", "IIR/FCR", "LCR", "MCR", "LSR", "MSR", "SCR"};
    if (in(layout::kCom1Port, 8)) return fmt::format("(COM1 {})", kUartRegs[s.addr - layout::kCom1Port]);
    if (in(layout::kPciConfigAddrPort, 8)) return "(PCI config)";
    if (in(layout::kAcpiPmBase, devices::AcpiPm::kSize)) return "(ACPI PM)";
    if (in(layout::kRtcPort, devices::CmosRtc::kSize)) return "(RTC)";
    if (in(0x60, 5)) return "(i8042)";
    if (s.addr == layout::kPvpanicPort) return "(pvpanic)";
    if (s.addr == 0x80) return "(POST)";
    return "";
  };
  auto busiest = ExitSites::busiest(sites, kBusiestSites);
  if (!busiest.empty()) {
    out += "  exits by address (busiest first):";
    for (const auto& s : busiest) out += fmt::format(" {}{} {},", s.text(), owner(s).empty() ? "" : " " + owner(s), s.count);
    out.pop_back();
    out += unplaced ? fmt::format("; {} more at other addresses\n", unplaced) : "\n";
  }
  if (p.com1) out += fmt::format("  COM1: {}\n", p.com1->state());
  if (uint64_t dropped = devices::standard_output()->dropped(); dropped > 0)
    out += fmt::format("  stdout: {} bytes dropped (its reader went away, or passvm's messages came faster than it "
                       "read them)\n",
                       dropped);
  out += fmt::format("  {}: {}\n", p.bridge.name(), p.bridge.stats());
  for (const auto& [k, d] : p.passthru) out += fmt::format("  {}: {}\n", d.dev->name(), d.dev->stats());
  return out;
}

}  // namespace passvm
