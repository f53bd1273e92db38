#include "vmm/machine.h"

#include <fmt/format.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include "acpi/tables.h"
#include "boot/e820.h"
#include "boot/kernel_cache.h"
#include "boot/linux_boot.h"
#include "bus/bus.h"
#include "devices/acpi_pm.h"
#include "devices/cmos_rtc.h"
#include "devices/console_input.h"
#include "devices/i8042.h"
#include "devices/uart16550.h"
#include "kvm/vcpu.h"
#include "kvm/vm.h"
#include "memory/guest_memory.h"
#include "memory/layout.h"
#include "vfio/guest_dma.h"
#include "passthru/passthru_device.h"
#include "pci/host_bridge.h"
#include "pci/root.h"
#include "vfio/host_checks.h"
#include "vfio/linux_vfio.h"
#include "vmm/exit_control.h"

namespace passvm {
namespace {

// Signals that stop the machine (and SIGUSR2, which prints the counters) are blocked in every thread and
// read from a signalfd by one watcher thread, so no handler ever runs inside device or KVM code.
class SignalWatcher {
 public:
  explicit SignalWatcher(ExitControl& ctl) : ctl_(ctl) {
    sigemptyset(&set_);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR2}) sigaddset(&set_, s);
    if (pthread_sigmask(SIG_BLOCK, &set_, &old_) != 0) throw std::runtime_error("cannot block signals");
    sfd_ = signalfd(-1, &set_, SFD_CLOEXEC);
    stop_fd_ = eventfd(0, EFD_CLOEXEC);
    if (sfd_ < 0 || stop_fd_ < 0) throw std::runtime_error(fmt::format("signalfd: {}", strerror(errno)));
    thread_ = std::thread([this] { loop(); });
  }
  ~SignalWatcher() {
    uint64_t one = 1;
    if (write(stop_fd_, &one, sizeof one) < 0) {
    }
    thread_.join();
    close(sfd_);
    close(stop_fd_);
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

  // What SIGUSR2 prints; until set, SIGUSR2 is ignored.
  void on_stats(std::function<void()> fn) {
    std::lock_guard g(lock_);
    on_stats_ = std::move(fn);
  }

 private:
  void loop() {
    for (;;) {
      pollfd fds[2] = {{sfd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
      if (poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[1].revents) return;
      signalfd_siginfo info{};
      if (read(sfd_, &info, sizeof info) != sizeof info) continue;
      if (info.ssi_signo == SIGUSR2) {
        std::lock_guard g(lock_);
        if (on_stats_) on_stats_();
      } else {
        ctl_.request(ExitReason::Signal, strsignal(static_cast<int>(info.ssi_signo)));
      }
    }
  }

  ExitControl& ctl_;
  std::mutex lock_;
  std::function<void()> on_stats_;
  sigset_t set_{}, old_{};
  int sfd_ = -1, stop_fd_ = -1;
  std::thread thread_;
};

// -v: one line per setup step with the time it took, so a slow start says where the time went.
class StepLog {
 public:
  explicit StepLog(bool on) : on_(on), last_(std::chrono::steady_clock::now()), start_(last_) {}
  ~StepLog() {
    try {
      if (!exit_step_.empty()) (*this)(exit_step_);
    } catch (...) {  // a closed stderr must not turn an exit into a crash
    }
  }
  StepLog(const StepLog&) = delete;
  StepLog& operator=(const StepLog&) = delete;
  // A step that ends when this log is destroyed, i.e. after everything declared after it.
  void at_exit(std::string what) { exit_step_ = std::move(what); }
  void operator()(const std::string& what) {
    auto now = std::chrono::steady_clock::now();
    if (on_)
      fmt::print(stderr, "passvm: {:8.1f} ms  {}\n",
                 std::chrono::duration<double, std::milli>(now - last_).count(), what);
    last_ = now;
  }
  void note(const std::string& what) {
    if (on_) fmt::print(stderr, "passvm:              {}\n", what);
  }
  double total_ms() const {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  bool on_;
  std::string exit_step_;
  std::chrono::steady_clock::time_point last_, start_;
};

// A crash must not leave the user's terminal in raw mode: restore it, then die as the signal says.
std::atomic<devices::ConsoleInput*> g_console{nullptr};

void restore_terminal_and_die(int sig) {
  if (auto* c = g_console.load()) c->restore();
  signal(sig, SIG_DFL);
  raise(sig);
}

// Setup can take seconds (pinning guest RAM for DMA): a signal during it stops the setup cleanly.
struct SetupInterrupted {};
void check_interrupted(ExitControl& ctl) {
  if (ctl.requested()) throw SetupInterrupted{};
}

uint64_t host_memory_bytes() {
  FILE* f = fopen("/proc/meminfo", "re");
  if (!f) return 0;
  unsigned long long kb = 0;
  if (fscanf(f, "MemTotal: %llu kB", &kb) != 1) kb = 0;
  fclose(f);
  return kb * 1024;
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

int run(const MachineConfig& cfg, ExitControl& ctl, SignalWatcher& signals);

}  // namespace

int run_machine(const MachineConfig& cfg) {
  ExitControl ctl;
  SignalWatcher signals(ctl);
  try {
    return run(cfg, ctl, signals);
  } catch (const SetupInterrupted&) {
    fmt::print(stderr, "passvm: {}: stopped by {} during setup\n", cfg.name, ctl.detail());
    return exit_status(ExitReason::Signal);
  }
}

namespace {

int run(const MachineConfig& cfg, ExitControl& ctl, SignalWatcher& signals) {
  StepLog step(cfg.verbose);
  signal(SIGPIPE, SIG_IGN);  // a closed console must not kill the VM: output errors are handled where written
  raise_open_file_limit();

  uint64_t host_ram = host_memory_bytes();
  if (host_ram != 0 && cfg.memory > host_ram)
    throw std::runtime_error(fmt::format("-m {} MiB is more than this host's {} MiB of RAM: give a smaller -m",
                                         cfg.memory >> 20, host_ram >> 20));

  // KVM and RAM first: nothing else is worth building without them.
  Kvm kvm;
  if (cfg.cpus > kvm.max_vcpus())
    throw std::runtime_error(fmt::format("-c {}: this host's KVM allows at most {} vCPUs", cfg.cpus, kvm.max_vcpus()));
  Vm vm(kvm);
  step("KVM VM with in-kernel interrupt controllers");
  check_interrupted(ctl);
  const uint32_t phys_bits = kvm.guest_phys_bits();
  GuestMemory mem(cfg.memory, cfg.hugepages, phys_bits);
  // Above RAM, up to what the guest's physical address bits reach: large BARs (GPUs) need the room.
  // With passthrough devices the IOMMU's reach may be less; it is known once they are open.
  layout::PciWindows windows = layout::pci_windows(cfg.memory, phys_bits);
  for (const auto& r : mem.regions()) vm.map_memory(r.gpa, r.size, r.hva);  // the VM's teardown drops the slots
  step(fmt::format("{} MiB of guest RAM on {}", cfg.memory >> 20, mem.backing()));
  if (!mem.small_pages_reason().empty())
    fmt::print(stderr, "passvm: {}: guest RAM in 4 KiB pages (slower nested paging and DMA): {}\n", cfg.name,
               mem.small_pages_reason());

  // The kernel before any device is opened: a wrong kernel path should fail in milliseconds, not after
  // seconds of device resets and pinning guest RAM. The ACPI tables follow once the PCI windows are final.
  auto e820 = boot::build_e820(mem);
  boot::LinuxBoot boot = boot::load_linux(mem, cfg.kernel, cfg.initrd, cfg.cmdline, e820, acpi::kRsdpAddress,
                                          cfg.unpack_on_host, boot::KernelCache::default_dir());
  step(boot.from_cache         ? "unpacked kernel loaded from the cache, entering startup_64"
       : boot.unpacked_on_host ? "kernel unpacked and loaded, entering startup_64"
                             : fmt::format("kernel loaded; the guest decompresses it{}",
                                           boot.unpack_note.empty() ? "" : " (" + boot.unpack_note + ")"));


  Bus pio("port I/O"), mmio("MMIO");
  auto irq = [&vm](uint32_t gsi) { return [&vm, gsi](bool level) { vm.set_irq_line(gsi, level); }; };

  // Legacy platform devices.
  std::unique_ptr<devices::Uart16550> com1;
  if (cfg.com1 == "stdio") {
    com1 = std::make_unique<devices::Uart16550>(STDOUT_FILENO, irq(layout::kCom1Irq));
    pio.add(layout::kCom1Port, devices::Uart16550::kRegisterCount, com1.get());
  }
  devices::AcpiPm pm([&ctl] { ctl.request(ExitReason::PowerOff); }, irq(layout::kAcpiSciIrq));
  pio.add(layout::kAcpiPmBase, devices::AcpiPm::kSize, &pm);
  devices::CmosRtc rtc;
  pio.add(0x70, 2, &rtc);
  devices::I8042 i8042([&ctl] { ctl.request(ExitReason::Reset, "the guest reset the machine (i8042)"); });
  pio.add(0x60, devices::I8042::kSize, &i8042);
  devices::PostPort post;
  pio.add(0x80, 1, &post);

  // The PCI bus.
  pci::PciRoot root([&ctl] { ctl.request(ExitReason::Reset, "the guest reset the machine (port 0xcf9)"); });
  pio.add(layout::kPciConfigAddrPort, 8, &root.config_io());
  mmio.add(layout::kEcamStart, layout::kEcamSize, &root.ecam());
  pci::HostBridge bridge;
  root.add(0, 0, &bridge);

  // Passthrough devices share one container, so guest RAM is pinned and mapped into the IOMMU once.
  // Every device is checked before any is opened, so a wrong one fails before the others are reset.
  for (const auto& s : cfg.slots) {
    if (s.emulation != "passthru") continue;
    vfio::check_host_device(vfio::parse_bdf(s.config));
    if (!s.rom.empty() && access(s.rom.c_str(), R_OK) != 0)
      throw std::runtime_error(fmt::format("-s {},passthru,{},rom={}: cannot read the ROM file: {}", s.slot, s.config,
                                           s.rom, strerror(errno)));
  }
  vfio::Container container;
  // Every group first: a device that can only be reset with its bus needs the groups of all it resets.
  for (const auto& s : cfg.slots)
    if (s.emulation == "passthru") container.attach(vfio::parse_bdf(s.config));
  // Declared before the devices so that it is destroyed after them: devices stop and reset while guest RAM
  // is still mapped, then the mapping goes.
  std::unique_ptr<vfio::GuestDmaMap> dma;
  std::vector<std::unique_ptr<passthru::PassthruDevice>> passthru_devices;
  for (const auto& s : cfg.slots) {
    if (s.emulation != "passthru") continue;
    auto dev = passthru::open_passthru(s.config, container, vm, pio, mmio, {.windows = windows,
                                                                           .rom_file = s.rom,
                                                                           .verbose = cfg.verbose,
                                                                           .peer_dma = s.p2p ? &container : nullptr});
    root.add(static_cast<int>(s.slot), static_cast<int>(s.func), dev.get());
    step(fmt::format("passthru {} in slot {}:{}", dev->name(), s.slot, s.func));
    passthru_devices.push_back(std::move(dev));
    check_interrupted(ctl);
  }
  if (uint64_t reach = passthru_devices.empty() ? 0 : container.iova_limit(); reach != 0) {
    windows = layout::pci_windows(cfg.memory, phys_bits, reach);
    for (auto& d : passthru_devices) d->set_windows(windows);
    if (reach < (uint64_t{1} << phys_bits))
      step.note(fmt::format("the IOMMU reaches {:#x}, less than the CPU's {} bits: the 64-bit PCI window stays below "
                            "it", reach, phys_bits));
  }
  step.note(fmt::format("64-bit PCI window {:#x}-{:#x} ({}; {} physical address bits)", windows.mmio64.start,
                        windows.mmio64.end() - 1, layout::size_text(windows.mmio64.size), phys_bits));
  if (windows.mmio64.size == 0)
    throw std::runtime_error(fmt::format("-m {}M leaves no room for 64-bit PCI BARs below the IOMMU's limit of {:#x}: "
                                         "give a smaller -m", cfg.memory >> 20, windows.mmio64.start));
  acpi::build_tables(acpi::AcpiConfig{cfg.cpus, windows}, mem);
  if (!passthru_devices.empty()) {
    unsigned threads = mem.populate();
    step(fmt::format("guest RAM allocated ({} threads): {}", threads, mem.page_usage().describe()));
    check_interrupted(ctl);
    dma = std::make_unique<vfio::GuestDmaMap>(container, mem);
    step(fmt::format("guest RAM mapped for DMA ({} MiB pinned)", cfg.memory >> 20));
    check_interrupted(ctl);
  }
  root.assign_resources(windows);
  for (const auto& a : root.assignments())
    step.note(fmt::format("00:{:02x}.{} {} at {:#x} ({:#x} bytes, {})", a.slot, a.func,
                          a.index == pci::kRomBarIndex ? std::string("ROM") : fmt::format("BAR{}", a.index), a.address,
                          a.size, a.kind == pci::BarKind::Io ? "I/O" : a.kind == pci::BarKind::Mmio64 ? "64-bit" : "32-bit"));

  std::vector<std::unique_ptr<Vcpu>> vcpus;
  for (uint32_t i = 0; i < cfg.cpus; i++) vcpus.push_back(std::make_unique<Vcpu>(vm, i, cfg.cpus, pio, mmio, ctl, windows));
  vcpus[0]->setup_linux_boot(boot);
  // The ring for coalesced writes exists once a vCPU does; from here COM1's output may be batched.
  if (com1) com1->set_tx_batching([&vm](bool on) { vm.coalesce_pio(layout::kCom1Port, 1, on); });
  step(fmt::format("{} vCPUs; setup took {:.1f} ms in all", cfg.cpus, step.total_ms()));

  auto print_stats = [&] {
    std::string out = fmt::format("passvm: {} counters\n  guest RAM: {}\n", cfg.name, mem.page_usage().describe());
    for (const auto& v : vcpus) {
      auto s = v->stats();
      out += fmt::format("  vcpu{}: io exits {}, mmio exits {}, other exits {}\n", v->index(), s.io, s.mmio, s.other);
    }
    out += fmt::format("  {}: {}\n", bridge.name(), bridge.stats());
    for (const auto& d : passthru_devices) out += fmt::format("  {}: {}\n", d->name(), d->stats());
    fputs(out.c_str(), stderr);
  };

  signals.on_stats(print_stats);
  struct StatsOff {
    SignalWatcher& s;
    ~StatsOff() { s.on_stats({}); }
  } stats_off{signals};
  check_interrupted(ctl);
  {
    std::unique_ptr<devices::ConsoleInput> console;
    if (com1) {
      console = std::make_unique<devices::ConsoleInput>(STDIN_FILENO, *com1, [&ctl] {
        ctl.request(ExitReason::Signal, "Ctrl-A x on the console");
      });
      g_console = console.get();
      for (int sig : {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL}) signal(sig, restore_terminal_and_die);
    }
    for (auto& v : vcpus) v->start();
    // Coalesced writes reach their device at the next exit of any vCPU; a guest that writes and then
    // only halts (a panic message's last line) would keep them queued, so drain now and then too.
    while (!ctl.wait_for(std::chrono::milliseconds(50))) vm.drain_coalesced(pio, mmio);
    step("the guest ran");
    for (auto& v : vcpus) v->kick();
    for (auto& v : vcpus) v->stop();
    step("vCPUs stopped");
    vm.drain_coalesced(pio, mmio);
    if (console) console->stop();
    g_console = nullptr;
  }

  ExitReason reason = ctl.reason();
  if (cfg.stats) print_stats();
  switch (reason) {
    case ExitReason::PowerOff: break;
    case ExitReason::Reset: fmt::print(stderr, "passvm: {}: {}\n", cfg.name, ctl.detail()); break;
    case ExitReason::TripleFault: fmt::print(stderr, "passvm: {}: the guest triple-faulted: {}\n", cfg.name, ctl.detail()); break;
    case ExitReason::InternalError: fmt::print(stderr, "passvm: {}: internal error: {}\n", cfg.name, ctl.detail()); break;
    case ExitReason::Signal: fmt::print(stderr, "passvm: {}: stopped by {}\n", cfg.name, ctl.detail()); break;
  }
  // The destructors' own order, made explicit so that -v says where a slow stop spends its time.
  if (!passthru_devices.empty()) {
    // Releasing a device makes vfio-pci reset it (an FLR alone waits 100 ms): release them side by side.
    // Each device's teardown touches only its own state and the VM's locked tables.
    std::vector<double> took(passthru_devices.size());
    std::vector<std::string> names;
    std::vector<std::thread> releases;
    for (size_t i = 0; i < passthru_devices.size(); i++) {
      names.push_back(passthru_devices[i]->name());
      auto release = [&, i] {
        auto t0 = std::chrono::steady_clock::now();
        passthru_devices[i].reset();
        took[i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      };
      try {
        releases.emplace_back(release);
      } catch (const std::system_error&) {  // no thread to be had: release it here
        release();
      }
    }
    for (auto& t : releases) t.join();
    passthru_devices.clear();
    step(fmt::format("{} passthrough device{} released side by side (vfio-pci resets them)", names.size(),
                     names.size() == 1 ? "" : "s"));
    for (size_t i = 0; i < names.size(); i++) step.note(fmt::format("{} released in {:.1f} ms", names[i], took[i]));
    dma.reset();
    step("guest RAM unmapped from the IOMMU and unpinned");
  }
  step.at_exit("VM closed and guest RAM freed");  // StepLog outlives every other object here
  return exit_status(reason);
}

}  // namespace
}  // namespace passvm
