// vfio: the Linux kernel transport (/dev/vfio).
//
// One Container per machine: it holds the IOMMU address space (type1v2), so
// guest RAM is pinned and mapped once however many devices are passed
// through, each of them possibly in its own IOMMU group. Groups are opened on
// demand and attached to the container; the first attachment selects the
// IOMMU type, which is why DMA can only be mapped once a device is open.
// The container must outlive the devices it opened.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <mutex>
#include <string>
#include <vector>

#include "vfio/bdf.h"
#include "vfio/device.h"

namespace passvm::vfio {

class Container : public DmaMapper {
 public:
  // The roots are for tests; on a host they are /sys and /dev. Nothing is opened until open_device().
  explicit Container(std::string sysfs_root = "/sys", std::string dev_root = "/dev");
  ~Container() override;
  Container(const Container&) = delete;
  Container& operator=(const Container&) = delete;

  // Checks the host (host_checks.h) and attaches the device's IOMMU group, so that devices opened later
  // may reset it along with themselves (a bus reset needs every group it touches). Throws VfioError.
  void attach(const Bdf& bdf);
  // Checks the host, opens the device's group and the device. A device vfio-pci cannot reset on its own
  // (no function reset) gets a bus or slot reset when every device that resets with it is in a group
  // attached here; reset_method() says what ran. Throws VfioError.
  std::unique_ptr<Device> open_device(const Bdf& bdf);
  // The same for several devices, in their order, opened side by side (vfio-pci resets each as it opens
  // it); a bus reset one of them needs may take the others along, as none is in use yet.
  std::vector<std::unique_ptr<Device>> open_devices(const std::vector<Bdf>& bdfs);
  // After the device opened from here is closed (a hot-unplug): its IOMMU group is let go once no
  // device of it is open here, so the host can have the device back. When that was the last group,
  // the kernel drops the IOMMU context and every DMA mapping with it: unmap guest RAM before; the next
  // device opened selects the IOMMU again.
  void detach(const Bdf& bdf);

  // Told of each IOMMU group attached (added true) and of each about to be closed (false), with its fd:
  // the machine lets KVM know of them (Vm::add_vfio_group). Set before any device is opened; called with
  // the container's lock held, so it must not call back into the container. Throwing refuses the group.
  std::function<void(int group_fd, bool added)> on_group;

  void map_dma(const DmaRegion& region) override;
  void unmap_dma(uint64_t iova, uint64_t size) override;
  // From the IOMMU's IOVA ranges (VFIO_IOMMU_GET_INFO); 0 before a device is opened or when not reported.
  std::vector<IovaRange> iova_ranges() override;

 private:
  int group_fd(const Bdf& bdf, int group);  // with lock_ held
  void open_container();                    // with lock_ held
  struct HotReset {
    std::string method, why_not;
  };
  // With lock_ held. Refused when the reset would take along a device open here, unless it is in not_in_use.
  HotReset hot_reset(int device_fd, const Bdf& bdf, const std::set<std::string>& not_in_use);
  std::unique_ptr<Device> open_one(const Bdf& bdf);  // without its fallback reset

  std::string sysfs_root_, dev_root_;
  std::mutex lock_;
  int fd_ = -1;
  bool iommu_set_ = false;
  std::map<int, int> groups_;            // group number -> fd
  std::map<std::string, int> device_group_;  // devices opened here -> their group
  std::map<uint64_t, uint64_t> mapped_;  // iova -> size, unmapped at destruction if still there
  std::set<std::string> hot_reset_done_;  // devices a hot reset of ours already reset
  // What iova_ranges() last read: they change only when a group joins or leaves.
  std::optional<std::vector<IovaRange>> iova_ranges_;
};

}  // namespace passvm::vfio
