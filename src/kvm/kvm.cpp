#include <fcntl.h>
#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "kvm/cpuid.h"
#include "kvm/uapi.h"
#include "kvm/vm.h"

namespace passvm {

namespace {

struct RequiredCap {
  long cap;
  const char* name;
  const char* why;
};

// What passvm cannot run without; all have been in mainline Linux since 4.11.
constexpr RequiredCap kRequiredCaps[] = {
    {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", "guest RAM"},
    {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", "the in-kernel interrupt controllers"},
    {KVM_CAP_PIT2, "KVM_CAP_PIT2", "the in-kernel timer"},
    {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR", "VM setup"},
    {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID", "CPUID setup"},
    {KVM_CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING", "MSI routing"},
    {KVM_CAP_IRQFD, "KVM_CAP_IRQFD", "device interrupts"},
    {KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD", "device doorbells"},
    {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", "stopping vCPUs"},
    {KVM_CAP_SIGNAL_MSI, "KVM_CAP_SIGNAL_MSI", "MSI from emulated devices"},
};

}  // namespace

Kvm::Kvm(const std::string& path) {
  fd_ = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) {
    int err = errno;
    if (err == ENOENT)
      throw std::runtime_error(fmt::format(
          "{} not found: load kvm_intel or kvm_amd (modprobe kvm_intel), and enable virtualization "
          "(VT-x/AMD-V) in the firmware",
          path));
    if (err == EACCES || err == EPERM)
      throw std::runtime_error(fmt::format(
          "permission denied opening {}: add your user to the kvm group (usermod -aG kvm $USER) and log in again",
          path));
    throw std::runtime_error(fmt::format("cannot open {}: {}", path, strerror(err)));
  }
  int version = ioctl(fd_, KVM_GET_API_VERSION, 0);
  if (version < 0) {
    int err = errno;
    close(fd_);
    throw std::runtime_error(fmt::format("{} is not a KVM device ({}): check that it is the kvm character device",
                                         path, strerror(err)));
  }
  if (version != KVM_API_VERSION) {
    close(fd_);
    throw std::runtime_error(
        fmt::format("{} speaks KVM API version {}, passvm needs {}: the host kernel is too old or too new", path,
                    version, KVM_API_VERSION));
  }
  for (const auto& c : kRequiredCaps) {
    if (check_extension(c.cap) <= 0) {
      close(fd_);
      throw std::runtime_error(fmt::format(
          "this KVM lacks {} (needed for {}): run passvm on a host kernel 4.11 or newer with full KVM support",
          c.name, c.why));
    }
  }
}

Kvm::~Kvm() {
  if (fd_ >= 0) close(fd_);
}

int Kvm::check_extension(long ext) const {
  int r = ioctl(fd_, KVM_CHECK_EXTENSION, ext);
  return r < 0 ? 0 : r;
}

size_t Kvm::vcpu_mmap_size() const {
  int r = ioctl(fd_, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (r <= 0) throw std::runtime_error(fmt::format("KVM_GET_VCPU_MMAP_SIZE failed: {}", strerror(errno)));
  return static_cast<size_t>(r);
}

uint32_t Kvm::max_vcpus() const {
  int n = check_extension(KVM_CAP_MAX_VCPUS);
  if (n <= 0) n = check_extension(KVM_CAP_NR_VCPUS);
  return n <= 0 ? 4u : static_cast<uint32_t>(n);  // the API's documented default when neither is reported
}

uint32_t Kvm::guest_phys_bits() const {
  auto entries = cpuid_entries(supported_cpuid());
  auto* ext = find_cpuid(entries, 0x80000008);
  uint32_t bits = ext ? ext->eax & 0xff : 0;
  // EAX[23:16] (GuestPhysBits, Linux 6.10 on) is what KVM's page tables reach when that is less than the
  // CPU's address bits (52-bit CPUs without 5-level EPT/NPT): a BAR placed above it would never map.
  uint32_t reachable = ext ? (ext->eax >> 16) & 0xff : 0;
  if (reachable && reachable < bits) bits = reachable;
  return bits >= 36 && bits <= 52 ? bits : 36;
}

std::vector<uint8_t> Kvm::supported_cpuid() const {
  // The kernel says E2BIG until the buffer is big enough; grow it.
  for (uint32_t n = 64; n <= 4096; n *= 2) {
    kvm_uapi::Cpuid2Header header{n, 0};
    std::vector<uint8_t> buf(sizeof header + n * sizeof(kvm_cpuid_entry2));
    std::memcpy(buf.data(), &header, sizeof header);
    if (ioctl(fd_, kvm_uapi::kGetSupportedCpuid, buf.data()) == 0) {
      std::memcpy(&header, buf.data(), sizeof header);
      buf.resize(sizeof header + header.nent * sizeof(kvm_cpuid_entry2));
      return buf;
    }
    if (errno != E2BIG) throw std::runtime_error(fmt::format("KVM_GET_SUPPORTED_CPUID failed: {}", strerror(errno)));
  }
  throw std::runtime_error("KVM_GET_SUPPORTED_CPUID reports more than 4096 entries");
}

}  // namespace passvm
