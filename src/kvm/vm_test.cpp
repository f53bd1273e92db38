#include "kvm/vm.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <memory>
#include <stdexcept>

#include "memory/guest_memory.h"
#include "memory/layout.h"

namespace passvm {
namespace {

std::unique_ptr<Kvm> open_kvm(std::string* why) {
  try {
    return std::make_unique<Kvm>();
  } catch (const std::runtime_error& e) {
    *why = e.what();
    return nullptr;
  }
}

class VmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string why;
    kvm_ = open_kvm(&why);
    if (!kvm_) GTEST_SKIP() << "no usable KVM: " << why;
    vm_ = std::make_unique<Vm>(*kvm_);
  }
  std::unique_ptr<Kvm> kvm_;
  std::unique_ptr<Vm> vm_;
};

size_t count_gsi(const std::vector<kvm_irq_routing_entry>& t, uint32_t gsi) {
  size_t n = 0;
  for (const auto& e : t) n += e.gsi == gsi;
  return n;
}

std::string kvm_error(const std::string& path) {
  try {
    Kvm k(path);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "";
}

TEST(Kvm, ClearErrorsForMissingOrWrongDevice) {
  EXPECT_NE(kvm_error("/nonexistent/kvm").find("not found: load kvm_intel or kvm_amd"), std::string::npos);
  EXPECT_NE(kvm_error("/dev/null").find("/dev/null is not a KVM device"), std::string::npos);
}

TEST_F(VmTest, InitialRoutingIsKvmDefault) {
  auto t = vm_->routes();
  ASSERT_EQ(t.size(), 16u * 2 + 8);
  for (uint32_t gsi = 0; gsi < 24; gsi++) EXPECT_EQ(count_gsi(t, gsi), gsi < 16 ? 2u : 1u) << gsi;
  for (const auto& e : t) {
    EXPECT_EQ(e.type, static_cast<uint32_t>(KVM_IRQ_ROUTING_IRQCHIP));
    uint32_t want_pin = e.u.irqchip.irqchip == KVM_IRQCHIP_IOAPIC ? e.gsi : e.gsi % 8;
    EXPECT_EQ(e.u.irqchip.pin, want_pin) << "gsi " << e.gsi;
    EXPECT_EQ(e.u.irqchip.irqchip == KVM_IRQCHIP_PIC_SLAVE, e.gsi >= 8 && e.gsi < 16 && e.u.irqchip.irqchip != KVM_IRQCHIP_IOAPIC);
  }
}

TEST_F(VmTest, MsiRoutesGetFreshGsisAndAreReused) {
  uint32_t a = vm_->alloc_msi_route(0xfee00000, 0x4041);
  uint32_t b = vm_->alloc_msi_route(0xfee01000, 0x4042);
  EXPECT_EQ(a, 24u);
  EXPECT_EQ(b, 25u);
  vm_->update_msi_route(b, 0x1'fee02000, 0x4043);
  auto t = vm_->routes();
  ASSERT_EQ(t.size(), 42u);
  const auto& eb = t.back();
  EXPECT_EQ(eb.gsi, 25u);
  EXPECT_EQ(eb.type, static_cast<uint32_t>(KVM_IRQ_ROUTING_MSI));
  EXPECT_EQ(eb.u.msi.address_lo, 0xfee02000u);
  EXPECT_EQ(eb.u.msi.address_hi, 1u);
  EXPECT_EQ(eb.u.msi.data, 0x4043u);
  vm_->free_msi_route(a);
  EXPECT_EQ(count_gsi(vm_->routes(), 24), 0u);
  EXPECT_EQ(vm_->alloc_msi_route(0xfee00000, 0x4044), 24u);
  EXPECT_EQ(vm_->alloc_msi_route(0xfee00000, 0x4045), 26u);
  EXPECT_THROW(vm_->free_msi_route(5), std::invalid_argument);  // an IOAPIC pin, not an MSI route
  EXPECT_THROW(vm_->update_msi_route(99, 0xfee00000, 0), std::invalid_argument);
}

TEST_F(VmTest, IrqfdOnMsiRouteAndResampleOnIntx) {
  int efd = eventfd(0, EFD_CLOEXEC);
  int rfd = eventfd(0, EFD_CLOEXEC);
  int ifd = eventfd(0, EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  uint32_t gsi = vm_->alloc_msi_route(0xfee00000, 0x30);
  vm_->add_irqfd(efd, gsi);
  uint64_t one = 1;
  ASSERT_EQ(write(efd, &one, 8), 8);  // injects into a VM without vCPUs: accepted, goes nowhere
  // A second irqfd on the same eventfd is refused by KVM: the wrapper must surface that.
  EXPECT_THROW(vm_->add_irqfd(efd, gsi), std::runtime_error);
  vm_->remove_irqfd(efd, gsi);
  vm_->add_irqfd(efd, gsi);  // after deassign the eventfd is free again
  vm_->remove_irqfd(efd, gsi);
  vm_->free_msi_route(gsi);

  vm_->add_irqfd(ifd, layout::pci_intx_gsi(3, 0), rfd);
  vm_->remove_irqfd(ifd, layout::pci_intx_gsi(3, 0));
  vm_->set_irq_line(layout::pci_intx_gsi(3, 0), true);
  vm_->set_irq_line(layout::pci_intx_gsi(3, 0), false);
  EXPECT_FALSE(vm_->signal_msi(0xfee00000, 0x31));  // no vCPU yet: nobody takes it, and that is no error
  close(efd);
  close(rfd);
  close(ifd);
}

TEST_F(VmTest, IoeventfdAssignAndDeassign) {
  int efd = eventfd(0, EFD_CLOEXEC);
  vm_->add_ioeventfd(efd, 0xd0000000, 4, false);
  vm_->add_ioeventfd(efd, 0x90, 1, true);
  EXPECT_THROW(vm_->add_ioeventfd(efd, 0x90, 1, true), std::runtime_error);  // already there
  vm_->remove_ioeventfd(efd, 0x90, 1, true);
  vm_->remove_ioeventfd(efd, 0xd0000000, 4, false);
  EXPECT_THROW(vm_->remove_ioeventfd(efd, 0x90, 1, true), std::runtime_error);
  close(efd);
}

TEST_F(VmTest, MemorySlotsAreAllocatedAndReused) {
  GuestMemory mem(32 * layout::MiB, false);
  const auto& r = mem.regions()[0];
  uint32_t s0 = vm_->map_memory(0, 16 * layout::MiB, r.hva);
  uint32_t s1 = vm_->map_memory(16 * layout::MiB, 16 * layout::MiB, r.hva + 16 * layout::MiB);
  EXPECT_NE(s0, s1);
  try {
    vm_->map_memory(8 * layout::MiB, 4096, r.hva);
    ADD_FAILURE() << "overlapping slot accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("overlaps"), std::string::npos) << e.what();
  }
  EXPECT_THROW(vm_->map_memory(0x123, 4096, r.hva), std::invalid_argument);
  vm_->unmap_memory(s0);
  EXPECT_THROW(vm_->unmap_memory(s0), std::invalid_argument);
  EXPECT_EQ(vm_->map_memory(0, 4096, r.hva), s0);
}

}  // namespace
}  // namespace passvm
