#include "passthru/vectors.h"

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <fmt/format.h>

namespace passvm::passthru {

void Vectors::create(uint32_t n) {
  resize(n);
  try {
    for (uint32_t i = 0; i < n; i++) ensure(i);
  } catch (...) {
    release();
    throw;
  }
}

void Vectors::resize(uint32_t n) {
  release();
  v_.resize(n);
}

int Vectors::ensure(uint32_t i) {
  Vector& v = v_.at(i);
  if (v.fd >= 0) return v.fd;
  v.fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (v.fd < 0)
    throw std::runtime_error(fmt::format("{}: cannot create an eventfd for interrupt vector {}: {}", name_, i,
                                         std::strerror(errno)));
  park(i);
  return v.fd;
}

void Vectors::drop(uint32_t i) {
  if (i < v_.size()) release(v_[i]);
}

uint32_t Vectors::in_use() const {
  uint32_t n = 0;
  for (auto& v : v_) n += v.fd >= 0;
  return n;
}

std::vector<int> Vectors::fds() const {
  std::vector<int> out;
  for (auto& v : v_) out.push_back(v.fd);
  return out;
}

void Vectors::park(uint32_t i) {
  Vector& v = v_[i];
  if (v.wired) {
    try {
      platform_.remove_irqfd(v.fd, v.gsi);
      v.wired = false;
    } catch (const std::exception& e) {
      // A guest's mask must not stop the VM: the vector stays wired (its interrupts still reach the
      // guest while masked), and the next mask or unmask tries again.
      if (!v.mask_warned) warn_.say(fmt::format("cannot mask {} vector {} ({})", kind_, i, e.what()));
      v.mask_warned = true;
      return;
    }
  }
  if (watch_fd_ >= 0) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = static_cast<uint64_t>(tag_) << 32 | i;
    epoll_ctl(watch_fd_, EPOLL_CTL_ADD, v.fd, &ev);  // EEXIST when already parked: fine
  }
}

void Vectors::set(uint32_t i, uint64_t address, uint32_t data, bool masked) {
  if (!has(i)) return;
  Vector& v = v_[i];
  if (!masked && !is_x86_msi_address(address)) {
    if (!v.warned)
      warn_.say(fmt::format("{} vector {} programmed with MSI address {:#x}, not an interrupt; kept masked", kind_, i,
                            address));
    v.warned = true;
    masked = true;
  }
  if (masked) {
    park(i);
    return;
  }
  if (v.has_route && v.wired && v.address == address && v.data == data) return;
  if (!v.wired && watch_fd_ >= 0) epoll_ctl(watch_fd_, EPOLL_CTL_DEL, v.fd, nullptr);
  bool deliver = !v.wired && pending(i);
  try {
    if (!v.has_route) {
      v.gsi = platform_.alloc_msi_route(address, data);
      v.has_route = true;
      routes_made++;
    } else if (v.address != address || v.data != data) {
      platform_.update_msi_route(v.gsi, address, data);
    }
    v.address = address;
    v.data = data;
    if (!v.wired) {
      platform_.add_irqfd(v.fd, v.gsi, -1);
      v.wired = true;
    }
    if (deliver) {
      platform_.signal_msi(address, data);
      v.pending = false;
    }
  } catch (const std::exception& e) {
    // KVM refused the route or the irqfd (a VM has 4096 routes; a guest that unmasks thousands of
    // vectors runs out): the vector is parked again (watched, its interrupts pending, the one that
    // was pending kept), and the machine goes on.
    if (!v.route_warned)
      warn_.say(fmt::format("cannot route {} vector {} to the guest ({}); kept masked", kind_, i, e.what()));
    v.route_warned = true;
    park(i);
  }
}

bool Vectors::pending(uint32_t i) {
  if (i >= v_.size()) return false;
  Vector& v = v_[i];
  if (v.fd >= 0 && !v.wired) {
    uint64_t n = 0;
    if (read(v.fd, &n, sizeof n) == sizeof n && n > 0) {
      v.pending = true;
      masked_hits += n;
    }
  }
  return v.pending;
}

void Vectors::release(Vector& v) {
  // A route is freed only once no irqfd points at it: given to another vector while a stale irqfd still
  // fed it, it would take this one's interrupts. (KVM refusing to remove an irqfd is rare; the route is
  // then one of the VM's 4096 lost.)
  bool unwired = true;
  if (v.wired) {
    try {
      platform_.remove_irqfd(v.fd, v.gsi);
    } catch (const std::exception& e) {
      unwired = false;
      warn_.say(fmt::format("releasing an {} vector: {}; its route is kept", kind_, e.what()));
    }
  }
  if (v.has_route && unwired) {
    try {
      platform_.free_msi_route(v.gsi);
    } catch (const std::exception& e) {
      warn_.say(fmt::format("releasing an {} vector's route: {}", kind_, e.what()));
    }
  }
  if (v.fd >= 0) {
    if (watch_fd_ >= 0) epoll_ctl(watch_fd_, EPOLL_CTL_DEL, v.fd, nullptr);
    close(v.fd);
  }
  v = Vector{};
}

void Vectors::release() {
  for (auto& v : v_) release(v);
  v_.clear();
}

}  // namespace passvm::passthru
