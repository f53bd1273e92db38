#include "passthru/interrupts.h"

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <fmt/format.h>

#include "base/eprint.h"
#include "confine/seccomp.h"

namespace passvm::passthru {
namespace {

constexpr uint64_t kStopTag = ~uint64_t{0};
constexpr uint32_t kMsiTag = 0, kMsixTag = 1;

int watcher_epoll(bool wanted) { return wanted ? epoll_create1(EPOLL_CLOEXEC) : -1; }

}  // namespace

Interrupts::Interrupts(vfio::Device& dev, Platform& platform, std::string name, std::mutex& lock,
                       bool watcher_thread)
    : dev_(dev),
      platform_(platform),
      name_(std::move(name)),
      lock_(lock),
      epoll_fd_(watcher_epoll(watcher_thread)),
      warn_(name_, "interrupt warnings", "interrupt warnings"),
      msi_(platform, warn_, name_, "MSI", epoll_fd_, kMsiTag),
      msix_(platform, warn_, name_, "MSI-X", epoll_fd_, kMsixTag) {
  if (!watcher_thread) return;
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (epoll_fd_ < 0 || stop_fd_ < 0) {
    int e = errno;
    for (int fd : {epoll_fd_, stop_fd_})
      if (fd >= 0) close(fd);
    throw std::runtime_error(fmt::format("{}: cannot create the interrupt watcher: {}", name_, strerror(e)));
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kStopTag;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, stop_fd_, &ev);
  watcher_ = std::thread([this] { watch(); });
}

Interrupts::~Interrupts() {
  stop_watcher();
  shutdown();
  for (int* fd : {&intx_fd_, &intx_resample_fd_, &epoll_fd_, &stop_fd_})
    if (*fd >= 0) {
      close(*fd);
      *fd = -1;
    }
}

void Interrupts::stop_watcher() {
  if (!watcher_.joinable()) return;
  uint64_t one = 1;
  if (::write(stop_fd_, &one, sizeof one) < 0) {}
  watcher_.join();
}

void Interrupts::shutdown() {
  auto quietly = [&](auto&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      eprint("passvm: {}: teardown: {}\n", name_, e.what());
    }
  };
  if (msi_on_) quietly([&] { dev_.disable_irq(VFIO_PCI_MSI_IRQ_INDEX); });
  if (msix_on_) quietly([&] { dev_.disable_irq(VFIO_PCI_MSIX_IRQ_INDEX); });
  msi_on_ = msix_on_ = false;
  msi_.release();
  msix_.release();
  quietly([&] { disable_intx(); });
}

// ---- INTx ----

void Interrupts::set_intx_gsi(uint32_t gsi) {
  disable_intx();
  intx_gsi_ = gsi;
  enable_intx();
}

void Interrupts::enable_intx() {
  if (!intx_gsi_ || intx_on_ || msi_on_ || msix_on_) return;
  uint8_t pin = 0;
  try {
    dev_.read(VFIO_PCI_CONFIG_REGION_INDEX, 0x3d, std::span(&pin, 1));
  } catch (const std::exception&) {
    return;
  }
  if (pin == 0) return;  // the device has no INTx pin
  if (dev_.irq_info(VFIO_PCI_INTX_IRQ_INDEX).count == 0) return;
  try {
    if (intx_fd_ < 0) intx_fd_ = eventfd(0, EFD_CLOEXEC);
    if (intx_resample_fd_ < 0) intx_resample_fd_ = eventfd(0, EFD_CLOEXEC);
    if (intx_fd_ < 0 || intx_resample_fd_ < 0) throw std::runtime_error(strerror(errno));
    int trig[1] = {intx_fd_}, unmask[1] = {intx_resample_fd_};
    dev_.set_irq_eventfds(VFIO_PCI_INTX_IRQ_INDEX, vfio::IrqAction::Trigger, 0, trig);
    dev_.set_irq_eventfds(VFIO_PCI_INTX_IRQ_INDEX, vfio::IrqAction::Unmask, 0, unmask);
    platform_.add_irqfd(intx_fd_, *intx_gsi_, intx_resample_fd_);
    intx_on_ = true;
  } catch (const std::exception& e) {
    warn_.say(fmt::format("cannot wire INTx to GSI {}: {}", *intx_gsi_, e.what()));
    try {
      dev_.disable_irq(VFIO_PCI_INTX_IRQ_INDEX);
    } catch (const std::exception&) {
    }
  }
}

void Interrupts::disable_intx() {
  if (!intx_on_) return;
  intx_on_ = false;
  platform_.remove_irqfd(intx_fd_, *intx_gsi_);
  dev_.disable_irq(VFIO_PCI_INTX_IRQ_INDEX);
}

void Interrupts::stop(uint32_t index, Vectors& vectors, bool& on) {
  try {
    dev_.disable_irq(index);
  } catch (const std::exception& e) {
    warn_.say(e.what());
  }
  vectors.release();
  on = false;
}

// ---- MSI ----

bool Interrupts::start_msi(uint32_t count) {
  try {
    disable_intx();
    msi_.create(count);
    auto fds = msi_.fds();
    dev_.set_irq_eventfds(VFIO_PCI_MSI_IRQ_INDEX, vfio::IrqAction::Trigger, 0, fds);
    msi_on_ = true;
    return true;
  } catch (const std::exception& e) {
    warn_.say(fmt::format("cannot enable MSI: {}", e.what()));
    msi_.release();
    enable_intx();
    return false;
  }
}

bool Interrupts::apply_msi(const MsiCapability::Message& m) {
  if (msi_on_ && (!m.enabled || m.vectors != msi_.count())) {
    stop(VFIO_PCI_MSI_IRQ_INDEX, msi_, msi_on_);
    if (!m.enabled) enable_intx();
  }
  if (!m.enabled) return true;
  if (!msi_on_ && !start_msi(m.vectors)) return false;
  for (uint32_t i = 0; i < m.vectors; i++)
    msi_.set(i, m.address, (m.data & ~(m.vectors - 1)) | i, (m.mask >> i) & 1);
  return true;
}

// A masked vector's interrupt is held by its parked eventfd; the guest sees it as a pending bit.
uint32_t Interrupts::msi_pending() {
  uint32_t bits = 0;
  if (msi_on_)
    for (uint32_t i = 0; i < msi_.count() && i < 32; i++)
      if (msi_.pending(i)) bits |= 1u << i;
  return bits;
}

// ---- MSI-X ----

bool Interrupts::apply_msix(bool enable, bool function_masked, const MsixTable& table) {
  if (!enable) {
    if (msix_on_) {
      stop(VFIO_PCI_MSIX_IRQ_INDEX, msix_, msix_on_);
      enable_intx();
    }
    return true;
  }
  if (!msix_on_) {
    // On with the vectors the guest already unmasked (usually none: Linux enables MSI-X with every
    // entry masked); with none, vector 0 is enabled with no eventfd, so the device is in MSI-X mode
    // as the guest believes, without a host interrupt.
    uint32_t count = 1;
    try {
      disable_intx();
      msix_.resize(table.size());
      for (uint32_t i = 0; i < table.size(); i++)
        if (!function_masked && !table.entry(i).masked()) {
          msix_.ensure(i);
          count = i + 1;
        }
      auto fds = msix_.fds();
      fds.resize(count);
      dev_.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, vfio::IrqAction::Trigger, 0, fds);
    } catch (const std::exception& e) {
      warn_.say(fmt::format("cannot enable MSI-X: {}", e.what()));
      msix_.release();
      enable_intx();
      return false;
    }
    msix_on_ = true;
    msix_host_count_ = count;
    msix_resizable_ = !dev_.irq_info(VFIO_PCI_MSIX_IRQ_INDEX).noresize;
  } else if (function_masked == msix_masked_) {
    return true;
  }
  msix_masked_ = function_masked;
  for (uint32_t i = 0; i < table.size(); i++) apply_msix_vector(i, table);
  return true;
}

void Interrupts::msix_entry_changed(uint32_t i, const MsixTable& table) {
  if (msix_on_) apply_msix_vector(i, table);
}

void Interrupts::apply_msix_vector(uint32_t i, const MsixTable& table) {
  const auto& e = table.entry(i);
  bool masked = msix_masked_ || e.masked();
  // A vector gets a host interrupt when the guest first unmasks it, and keeps it.
  if (!msix_.has(i) && (masked || !give_host_vector(i))) return;
  msix_.set(i, e.address(), e.data, masked);
}

bool Interrupts::give_host_vector(uint32_t i) {
  const uint32_t before = msix_host_count_;
  bool reenabled = false;
  try {
    int fd[1] = {msix_.ensure(i)};
    if (i < msix_host_count_ || msix_resizable_) {
      dev_.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, vfio::IrqAction::Trigger, i, fd);
    } else {
      // The host kernel cannot add a vector while MSI-X is on: re-enable it with room for this one.
      auto fds = msix_.fds();
      fds.resize(i + 1);
      reenabled = true;
      dev_.disable_irq(VFIO_PCI_MSIX_IRQ_INDEX);
      dev_.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, vfio::IrqAction::Trigger, 0, fds);
    }
    msix_host_count_ = std::max(msix_host_count_, i + 1);
    return true;
  } catch (const std::exception& e) {
    uint32_t others = msix_.in_use() - (msix_.has(i) ? 1 : 0);
    warn_.say(fmt::format("the host cannot supply MSI-X vector {} ({} in use): {}; the guest's vector {} will raise "
                          "no interrupt", i, others, e.what(), i));
    msix_.drop(i);
  }
  if (reenabled) {
    // Give back what the device had, so the vectors already in use keep working.
    try {
      auto fds = msix_.fds();
      fds.resize(std::max(before, 1u));
      dev_.set_irq_eventfds(VFIO_PCI_MSIX_IRQ_INDEX, vfio::IrqAction::Trigger, 0, fds);
    } catch (const std::exception& e) {
      warn_.say(fmt::format("MSI-X could not be re-enabled with its {} vectors: {}", before, e.what()));
    }
  }
  return false;
}

bool Interrupts::msix_pending(uint32_t i) { return msix_on_ && msix_.pending(i); }

void Interrupts::watch() {
  confine::enter(confine::ThreadClass::Interrupts, "pv-irq");
  epoll_event events[16];
  for (;;) {
    int n = epoll_wait(epoll_fd_, events, 16, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    for (int i = 0; i < n; i++) {
      uint64_t tag = events[i].data.u64;
      if (tag == kStopTag) return;
      std::lock_guard g(lock_);
      ((tag >> 32) == kMsiTag ? msi_ : msix_).poll(static_cast<uint32_t>(tag));
    }
  }
}

}  // namespace passvm::passthru
