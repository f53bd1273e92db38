// kvm/uapi.h: the KVM ioctls whose numbers C++ gets wrong from <linux/kvm.h>.
//
// The kernel headers declare flexible arrays through __DECLARE_FLEX_ARRAY,
// which wraps them in a struct holding an empty struct. An empty struct is
// zero bytes in C but one byte in C++, so in C++ sizeof(kvm_cpuid2) and
// sizeof(kvm_irq_routing) come out larger, the entries move, and the ioctl
// numbers (which encode the size) stop matching the kernel's: it answers
// ENOTTY. These are the C layouts and numbers; entries start right after.
#pragma once

#include <cstdint>

#include <linux/kvm.h>
#include <sys/ioctl.h>

namespace passvm::kvm_uapi {

struct Cpuid2Header {
  uint32_t nent;
  uint32_t padding;
};
struct IrqRoutingHeader {
  uint32_t nr;
  uint32_t flags;
};
// struct kvm_msrs with room for a few entries.
struct Msrs {
  uint32_t nmsrs;
  uint32_t pad;
  kvm_msr_entry entries[8];
};
struct MsrsHeader {
  uint32_t nmsrs;
  uint32_t pad;
};

// struct kvm_xsave without the trailing flexible array (only used with KVM_GET_XSAVE2).
struct Xsave {
  uint32_t region[1024];
};
static_assert(sizeof(Cpuid2Header) == 8 && sizeof(IrqRoutingHeader) == 8 && sizeof(Xsave) == 4096);

inline constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, Cpuid2Header);
inline constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, Cpuid2Header);
inline constexpr unsigned long kGetCpuid2 = _IOWR(KVMIO, 0x91, Cpuid2Header);
inline constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
inline constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
inline constexpr unsigned long kGetXsave = _IOR(KVMIO, 0xa4, Xsave);
inline constexpr unsigned long kSetXsave = _IOW(KVMIO, 0xa5, Xsave);
inline constexpr unsigned long kSetGsiRouting = _IOW(KVMIO, 0x6a, IrqRoutingHeader);

}  // namespace passvm::kvm_uapi
