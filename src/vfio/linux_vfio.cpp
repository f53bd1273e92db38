#include "vfio/linux_vfio.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <cerrno>
#include <cstring>
#include <exception>
#include <future>
#include <vector>

#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fmt/format.h>

#include "vfio/aligned_map.h"
#include "vfio/guest_dma.h"
#include "vfio/host_checks.h"

namespace passvm::vfio {
namespace {

std::string err(int e) { return std::strerror(e); }

// One device fd. Region accesses are pread/pwrite at the region's offset in the fd.
class LinuxDevice final : public Device {
 public:
  LinuxDevice(Bdf bdf, int fd, std::string sysfs_root) : bdf_(bdf), fd_(fd), sysfs_root_(std::move(sysfs_root)) {
    vfio_device_info info{};
    info.argsz = sizeof info;
    if (ioctl(fd_, VFIO_DEVICE_GET_INFO, &info) < 0) {
      int e = errno;
      close(fd_);
      throw VfioError(fmt::format("{}: VFIO_DEVICE_GET_INFO failed: {}", bdf_.str(), err(e)), e);
    }
    if (!(info.flags & VFIO_DEVICE_FLAGS_PCI)) {
      close(fd_);
      throw VfioError(fmt::format("{}: not a PCI device according to VFIO", bdf_.str()));
    }
    flags_ = info.flags;
    num_regions_ = info.num_regions;
    num_irqs_ = info.num_irqs;
    for (uint32_t i = 0; i < num_regions_; i++) regions_.push_back(query_region(i));
  }
  ~LinuxDevice() override { close(fd_); }
  int device_fd() const { return fd_; }

  std::string name() const override { return bdf_.str(); }
  uint32_t num_regions() const override { return num_regions_; }
  uint32_t num_irqs() const override { return num_irqs_; }
  RegionInfo region_info(uint32_t index) const override {
    if (index < regions_.size()) return regions_[index].info;
    RegionInfo absent;
    absent.index = index;
    return absent;
  }

  void read(uint32_t region, uint64_t offset, std::span<uint8_t> data) override {
    uint64_t base = checked(region, offset, data.size());
    ssize_t n = pread(fd_, data.data(), data.size(), static_cast<off_t>(base + offset));
    if (n != static_cast<ssize_t>(data.size()))
      throw VfioError(fmt::format("{}: read of region {} at {:#x} failed: {}", bdf_.str(), region, offset,
                                  n < 0 ? err(errno) : "short read"));
  }
  void write(uint32_t region, uint64_t offset, std::span<const uint8_t> data) override {
    uint64_t base = checked(region, offset, data.size());
    ssize_t n = pwrite(fd_, data.data(), data.size(), static_cast<off_t>(base + offset));
    if (n != static_cast<ssize_t>(data.size()))
      throw VfioError(fmt::format("{}: write of region {} at {:#x} failed: {}", bdf_.str(), region, offset,
                                  n < 0 ? err(errno) : "short write"));
  }

  void* map(uint32_t region, uint64_t offset, uint64_t size) override {
    if (region >= regions_.size() || !regions_[region].info.mmappable) return nullptr;
    // Whole pages: vfio-pci maps a BAR smaller than a page as its page (it reserved the rest of it).
    const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
    const uint64_t limit = (regions_[region].info.size + page - 1) / page * page;
    if (offset > limit || size > limit - offset) return nullptr;
    const uint64_t base = regions_[region].fd_offset;
    int prot = (regions_[region].info.readable ? PROT_READ : 0) | (regions_[region].info.writable ? PROT_WRITE : 0);
    // Aligned like the guest address will be (BARs are aligned to their size), so large pages can back it.
    void* p = map_aligned(fd_, base + offset, size, prot, offset);
    return p == MAP_FAILED ? nullptr : p;
  }
  void unmap(void* address, uint64_t size) override { munmap(address, size); }

  IrqInfo irq_info(uint32_t index) const override {
    vfio_irq_info info{};
    info.argsz = sizeof info;
    info.index = index;
    IrqInfo out;
    out.index = index;
    if (index >= num_irqs_ || ioctl(fd_, VFIO_DEVICE_GET_IRQ_INFO, &info) < 0) return out;
    out.count = info.count;
    out.eventfd = info.flags & VFIO_IRQ_INFO_EVENTFD;
    out.maskable = info.flags & VFIO_IRQ_INFO_MASKABLE;
    out.automasked = info.flags & VFIO_IRQ_INFO_AUTOMASKED;
    out.noresize = info.flags & VFIO_IRQ_INFO_NORESIZE;
    return out;
  }

  void set_irq_eventfds(uint32_t index, IrqAction action, uint32_t start, std::span<const int> fds) override {
    uint32_t act = action == IrqAction::Trigger  ? VFIO_IRQ_SET_ACTION_TRIGGER
                   : action == IrqAction::Unmask ? VFIO_IRQ_SET_ACTION_UNMASK
                                                 : VFIO_IRQ_SET_ACTION_MASK;
    std::vector<int32_t> data(fds.begin(), fds.end());
    irq_set(index, VFIO_IRQ_SET_DATA_EVENTFD | act, start, static_cast<uint32_t>(fds.size()),
            std::as_bytes(std::span(data)));
  }
  void disable_irq(uint32_t index) override {
    irq_set(index, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, {});
  }
  void unmask_irq(uint32_t index, uint32_t start, uint32_t count) override {
    irq_set(index, VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK, start, count, {});
  }

  // vfio-pci resets the device at its first open when it can (VFIO_DEVICE_FLAGS_RESET says so), trying
  // the methods of sysfs reset_method in order; the first listed is the one that ran.
  std::string reset_method() const override {
    if (!(flags_ & VFIO_DEVICE_FLAGS_RESET)) return fallback_reset_;
    std::string method = vfio::reset_method(bdf_, sysfs_root_);
    return method.empty() ? "device" : method;
  }
  std::string no_reset_reason() const override { return no_reset_reason_; }
  bool resets_itself() const { return flags_ & VFIO_DEVICE_FLAGS_RESET; }
  // What the container did instead, for a device vfio-pci cannot reset by itself.
  void set_fallback_reset(std::string method, std::string why_not) {
    fallback_reset_ = std::move(method);
    no_reset_reason_ = std::move(why_not);
  }

 private:
  struct Region {
    RegionInfo info;
    uint64_t fd_offset = 0;
  };

  Region query_region(uint32_t index) {
    std::vector<uint8_t> buf(sizeof(vfio_region_info));
    auto* ri = reinterpret_cast<vfio_region_info*>(buf.data());
    ri->argsz = static_cast<uint32_t>(buf.size());
    ri->index = index;
    Region r;
    r.info.index = index;
    if (ioctl(fd_, VFIO_DEVICE_GET_REGION_INFO, ri) < 0) return r;  // VGA and the like may be absent
    if (ri->argsz > buf.size()) {  // capabilities follow: ask again with room for them
      uint32_t need = ri->argsz;
      buf.assign(need, 0);
      ri = reinterpret_cast<vfio_region_info*>(buf.data());
      ri->argsz = need;
      ri->index = index;
      if (ioctl(fd_, VFIO_DEVICE_GET_REGION_INFO, ri) < 0) return r;
    }
    r.fd_offset = ri->offset;
    r.info.size = ri->size;
    r.info.readable = ri->flags & VFIO_REGION_INFO_FLAG_READ;
    r.info.writable = ri->flags & VFIO_REGION_INFO_FLAG_WRITE;
    r.info.mmappable = ri->flags & VFIO_REGION_INFO_FLAG_MMAP;
    if (ri->flags & VFIO_REGION_INFO_FLAG_CAPS) parse_caps(buf, ri->cap_offset, r.info);
    return r;
  }

  // Capabilities are a chain of headers, each `next` an offset from the start of the buffer.
  static void parse_caps(const std::vector<uint8_t>& buf, uint32_t off, RegionInfo& info) {
    for (int guard = 0; off != 0 && guard < 64; guard++) {
      if (off + sizeof(vfio_info_cap_header) > buf.size()) return;
      vfio_info_cap_header h;
      std::memcpy(&h, buf.data() + off, sizeof h);
      if (h.id == VFIO_REGION_INFO_CAP_SPARSE_MMAP &&
          off + sizeof(vfio_region_info_cap_sparse_mmap) <= buf.size()) {
        vfio_region_info_cap_sparse_mmap sm;
        std::memcpy(&sm, buf.data() + off, sizeof sm);
        info.has_sparse = true;
        size_t areas = off + sizeof sm;
        for (uint32_t i = 0; i < sm.nr_areas && areas + (i + 1) * sizeof(vfio_region_sparse_mmap_area) <= buf.size();
             i++) {
          vfio_region_sparse_mmap_area a;
          std::memcpy(&a, buf.data() + areas + i * sizeof a, sizeof a);
          if (a.size) info.sparse.push_back({a.offset, a.size});
        }
      } else if (h.id == VFIO_REGION_INFO_CAP_MSIX_MAPPABLE) {
        info.msix_mappable = true;
      }
      off = h.next;
    }
  }

  uint64_t checked(uint32_t region, uint64_t offset, uint64_t len) const {
    if (region >= regions_.size() || offset > regions_[region].info.size ||
        len > regions_[region].info.size - offset)
      throw VfioError(fmt::format("{}: access to region {} at {:#x}+{} is outside the region", bdf_.str(), region,
                                  offset, len));
    return regions_[region].fd_offset;
  }

  void irq_set(uint32_t index, uint32_t flags, uint32_t start, uint32_t count, std::span<const std::byte> data) {
    std::vector<uint8_t> buf(sizeof(vfio_irq_set) + data.size());
    vfio_irq_set s{};
    s.argsz = static_cast<uint32_t>(buf.size());
    s.flags = flags;
    s.index = index;
    s.start = start;
    s.count = count;
    std::memcpy(buf.data(), &s, sizeof s);
    if (!data.empty()) std::memcpy(buf.data() + sizeof s, data.data(), data.size());
    int rc = ioctl(fd_, VFIO_DEVICE_SET_IRQS, buf.data());
    if (rc < 0) {
      int e = errno;
      throw VfioError(fmt::format("{}: VFIO_DEVICE_SET_IRQS (irq {}, vectors {}+{}) failed: {}", bdf_.str(), index,
                                  start, count, err(e)),
                      e);
    }
    // A positive result is the number of vectors the host could allocate, short of what was asked:
    // the kernel then enabled none of them.
    if (rc > 0)
      throw VfioError(fmt::format("{}: the host could allocate only {} of the {} interrupt vectors asked for (irq "
                                  "{}): its interrupt vectors are exhausted; free some or give the guest fewer",
                                  bdf_.str(), rc, start + count, index),
                      ENOSPC);
  }

  Bdf bdf_;
  int fd_;
  std::string sysfs_root_;
  uint32_t flags_ = 0, num_regions_ = 0, num_irqs_ = 0;
  std::string fallback_reset_, no_reset_reason_;
  std::vector<Region> regions_;
};

// VFIO_IOMMU_GET_INFO's IOVA ranges, in order; empty when the kernel does not report them.
std::vector<IovaRange> read_iova_ranges(int fd) {
  vfio_iommu_type1_info head{};
  head.argsz = sizeof head;
  if (ioctl(fd, VFIO_IOMMU_GET_INFO, &head) < 0 || head.argsz <= sizeof head) return {};
  std::vector<uint8_t> buf(head.argsz, 0);
  auto* info = reinterpret_cast<vfio_iommu_type1_info*>(buf.data());
  info->argsz = head.argsz;
  if (ioctl(fd, VFIO_IOMMU_GET_INFO, info) < 0 || !(info->flags & VFIO_IOMMU_INFO_CAPS)) return {};
  for (uint32_t off = info->cap_offset; off && off + sizeof(vfio_info_cap_header) <= buf.size();) {
    auto* cap = reinterpret_cast<vfio_info_cap_header*>(buf.data() + off);
    if (cap->id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE &&
        off + sizeof(vfio_iommu_type1_info_cap_iova_range) <= buf.size()) {
      auto* r = reinterpret_cast<vfio_iommu_type1_info_cap_iova_range*>(cap);
      std::vector<IovaRange> out;
      for (uint32_t i = 0; i < r->nr_iovas; i++) {
        if (off + sizeof *r + (i + 1) * sizeof(vfio_iova_range) > buf.size()) break;
        out.push_back({r->iova_ranges[i].start, r->iova_ranges[i].end});
      }
      std::sort(out.begin(), out.end(), [](const IovaRange& a, const IovaRange& b) { return a.start < b.start; });
      return out;
    }
    if (cap->next <= off) break;
    off = cap->next;
  }
  return {};
}

}  // namespace

Container::Container(std::string sysfs_root, std::string dev_root)
    : sysfs_root_(std::move(sysfs_root)), dev_root_(std::move(dev_root)) {}

Container::~Container() {
  for (auto [iova, size] : mapped_) {
    vfio_iommu_type1_dma_unmap u{};
    u.argsz = sizeof u;
    u.iova = iova;
    u.size = size;
    ioctl(fd_, VFIO_IOMMU_UNMAP_DMA, &u);
  }
  for (auto [n, fd] : groups_) {
    if (on_group) on_group(fd, false);
    close(fd);
  }
  if (fd_ >= 0) close(fd_);
}

std::vector<IovaRange> Container::iova_ranges() {
  std::lock_guard g(lock_);
  if (fd_ < 0 || !iommu_set_) return {};
  if (!iova_ranges_) iova_ranges_ = read_iova_ranges(fd_);
  return *iova_ranges_;
}

void Container::open_container() {
  if (fd_ >= 0) return;
  std::string path = dev_root_ + "/vfio/vfio";
  fd_ = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) {
    int e = errno;
    throw VfioError(fmt::format("cannot open {}: {}; load the vfio-pci module (modprobe vfio-pci) and run as root",
                                path, err(e)),
                    e);
  }
  if (ioctl(fd_, VFIO_GET_API_VERSION) != VFIO_API_VERSION)
    throw VfioError(fmt::format("{}: unknown VFIO API version", path));
  if (ioctl(fd_, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) <= 0)
    throw VfioError(fmt::format("{}: the kernel's VFIO lacks the type1v2 IOMMU backend passvm needs", path));
}

int Container::group_fd(const Bdf& bdf, int group) {
  if (auto it = groups_.find(group); it != groups_.end()) return it->second;
  std::string path = fmt::format("{}/vfio/{}", dev_root_, group);
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e == EACCES || e == EPERM)
      throw VfioError(fmt::format("{}: permission denied on {}; run passvm as root or give your user the device "
                                  "(chown $USER {})",
                                  bdf.str(), path, path),
                      e);
    if (e == EBUSY)
      throw VfioError(fmt::format("{}: {} is busy: another process (another VM?) holds IOMMU group {}", bdf.str(),
                                  path, group),
                      e);
    throw VfioError(fmt::format("{}: cannot open {}: {}", bdf.str(), path, err(e)), e);
  }
  vfio_group_status st{};
  st.argsz = sizeof st;
  if (ioctl(fd, VFIO_GROUP_GET_STATUS, &st) < 0) {
    int e = errno;
    close(fd);
    throw VfioError(fmt::format("{}: VFIO_GROUP_GET_STATUS on {} failed: {}", bdf.str(), path, err(e)), e);
  }
  if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE)) {
    close(fd);
    throw VfioError(not_viable_message(bdf, group, sysfs_root_));
  }
  if (ioctl(fd, VFIO_GROUP_SET_CONTAINER, &fd_) < 0) {
    int e = errno;
    close(fd);
    // A group joining a VM whose RAM is mapped already is refused, with EINVAL alone, when it reserves
    // addresses that RAM covers or its IOMMU cannot reach all of it.
    if (e == EINVAL && iommu_set_ && !mapped_.empty()) {
      std::ifstream in(fmt::format("{}/kernel/iommu_groups/{}/reserved_regions", sysfs_root_, group));
      std::string regions;
      for (std::string line; std::getline(in, line);) regions += line + "\n";
      std::string why = reserved_region_conflict(regions, mapped_);
      throw VfioError(fmt::format("{}: cannot add IOMMU group {} to this VM: {}; the device cannot be given to a "
                                  "guest with memory there",
                                  bdf.str(), group,
                                  why.empty() ? fmt::format("the kernel refused it (EINVAL); its IOMMU may not "
                                                            "reach all that this VM maps for DMA (up to {:#x})",
                                                            std::prev(mapped_.end())->first +
                                                                std::prev(mapped_.end())->second - 1)
                                              : why),
                      e);
    }
    throw VfioError(fmt::format("{}: cannot attach IOMMU group {} to the container: {}", bdf.str(), group, err(e)), e);
  }
  if (!iommu_set_) {
    if (ioctl(fd_, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) {
      int e = errno;
      close(fd);
      throw VfioError(fmt::format("{}: cannot select the type1v2 IOMMU: {}", bdf.str(), err(e)), e);
    }
    iommu_set_ = true;
  }
  if (on_group) {
    try {
      on_group(fd, true);
    } catch (...) {
      ioctl(fd, VFIO_GROUP_UNSET_CONTAINER);
      close(fd);
      if (groups_.empty()) {  // the kernel dropped the IOMMU context with it: the next group selects it again
        iommu_set_ = false;
        mapped_.clear();
      }
      throw;
    }
  }
  groups_[group] = fd;
  iova_ranges_.reset();
  return fd;
}

void Container::attach(const Bdf& bdf) {
  int group = check_host_device(bdf, sysfs_root_);
  std::lock_guard g(lock_);
  open_container();
  group_fd(bdf, group);
}

Container::HotReset Container::hot_reset(int device_fd, const Bdf& bdf, const std::set<std::string>& not_in_use) {
  if (hot_reset_done_.count(bdf.str())) return {"bus (reset with another device of this VM)", ""};
  std::vector<uint8_t> buf(sizeof(vfio_pci_hot_reset_info) + 8 * sizeof(vfio_pci_dependent_device));
  auto info = [&] { return reinterpret_cast<vfio_pci_hot_reset_info*>(buf.data()); };
  info()->argsz = static_cast<uint32_t>(buf.size());
  int rc = ioctl(device_fd, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, info());
  if (rc < 0 && errno == ENOSPC) {
    buf.resize(sizeof(vfio_pci_hot_reset_info) + info()->count * sizeof(vfio_pci_dependent_device));
    info()->argsz = static_cast<uint32_t>(buf.size());
    rc = ioctl(device_fd, VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, info());
  }
  if (rc < 0)
    return {"", errno == ENODEV ? "nor a bus or slot reset (nothing above it can reset it alone: a root bus, or a "
                                  "bridge without secondary bus reset)"
                                : fmt::format("and its bus reset cannot be queried: {}", err(errno))};
  std::vector<int32_t> fds;
  std::vector<std::string> affected;
  for (uint32_t i = 0; i < info()->count; i++) {
    const vfio_pci_dependent_device& d = info()->devices[i];
    Bdf other{d.segment, d.bus, static_cast<uint8_t>(d.devfn >> 3), static_cast<uint8_t>(d.devfn & 7)};
    // At boot nothing is open yet; a device hot-plugged later must not reset one the guest is using.
    if (!(other == bdf) && device_group_.count(other.str()) && !not_in_use.count(other.str()))
      return {"", fmt::format("and a bus reset would also reset {}, which this VM has open and in use", other.str())};
    auto it = groups_.find(static_cast<int>(d.group_id));
    if (it == groups_.end())
      return {"", fmt::format("and a bus reset would also reset {} (IOMMU group {}), which this VM does not hold: "
                              "pass it through too to have both reset",
                              other.str(), d.group_id)};
    if (std::find(fds.begin(), fds.end(), it->second) == fds.end()) fds.push_back(it->second);
    affected.push_back(other.str());
  }
  std::vector<uint8_t> req(sizeof(vfio_pci_hot_reset) + fds.size() * sizeof(int32_t));
  auto* r = reinterpret_cast<vfio_pci_hot_reset*>(req.data());
  r->argsz = static_cast<uint32_t>(req.size());
  r->count = static_cast<uint32_t>(fds.size());
  std::memcpy(req.data() + sizeof(vfio_pci_hot_reset), fds.data(), fds.size() * sizeof(int32_t));
  if (ioctl(device_fd, VFIO_DEVICE_PCI_HOT_RESET, r) < 0)
    return {"", fmt::format("and its bus reset failed: {}", err(errno))};
  std::string names;
  for (const auto& a : affected) {
    hot_reset_done_.insert(a);
    names += (names.empty() ? "" : ", ") + a;
  }
  return {fmt::format("bus, a hot reset of {}", names), ""};
}

std::unique_ptr<Device> Container::open_one(const Bdf& bdf) {
  int group = check_host_device(bdf, sysfs_root_);
  int gfd = -1;
  {
    std::lock_guard g(lock_);
    open_container();
    gfd = group_fd(bdf, group);
  }
  // Without the lock: vfio-pci resets the device as it opens it (an FLR waits 100 ms), and devices of
  // other groups open meanwhile. The group's fd stays: groups are let go only by detach(), which is
  // never called for a device while it is being opened.
  std::string name = bdf.str();
  int fd = ioctl(gfd, VFIO_GROUP_GET_DEVICE_FD, name.c_str());
  if (fd < 0) {
    int e = errno;
    throw VfioError(fmt::format("{}: cannot get the device from IOMMU group {}: {}{}", name, group, err(e),
                                e == EBUSY ? " (already opened by another passthru slot or process)" : ""),
                    e);
  }
  auto dev = std::make_unique<LinuxDevice>(bdf, fd, sysfs_root_);
  std::lock_guard g(lock_);
  device_group_[name] = group;
  return dev;
}

std::unique_ptr<Device> Container::open_device(const Bdf& bdf) { return std::move(open_devices({bdf}).front()); }

std::vector<std::unique_ptr<Device>> Container::open_devices(const std::vector<Bdf>& bdfs) {
  std::vector<std::unique_ptr<Device>> opened;  // each a LinuxDevice, made by open_one
  if (bdfs.size() == 1) {
    opened.push_back(open_one(bdfs.front()));
  } else {
    // Every open is waited for before the first error is thrown, so that no thread outlives this call;
    // the devices that did open are then closed and forgotten.
    std::vector<std::future<std::unique_ptr<Device>>> opening;
    for (const Bdf& b : bdfs) opening.push_back(std::async(std::launch::async, [this, b] { return open_one(b); }));
    std::exception_ptr failed;
    for (auto& f : opening) {
      try {
        opened.push_back(f.get());
      } catch (...) {
        if (!failed) failed = std::current_exception();
      }
    }
    if (failed) {
      std::lock_guard g(lock_);
      for (const auto& d : opened) device_group_.erase(d->name());
      std::rethrow_exception(failed);
    }
  }
  // Then, one after the other, a bus or slot reset for each device vfio-pci could not reset alone. The
  // others opened here are not in use yet, so the reset may take them along.
  std::lock_guard g(lock_);
  std::set<std::string> batch;
  for (const Bdf& b : bdfs) batch.insert(b.str());
  for (size_t i = 0; i < opened.size(); i++) {
    auto& dev = static_cast<LinuxDevice&>(*opened[i]);
    if (!dev.resets_itself()) {
      HotReset r = hot_reset(dev.device_fd(), bdfs[i], batch);
      dev.set_fallback_reset(r.method, r.why_not);
    }
  }
  return opened;
}

void Container::detach(const Bdf& bdf) {
  std::lock_guard g(lock_);
  int group = -1;
  if (auto it = device_group_.find(bdf.str()); it != device_group_.end()) {
    group = it->second;
    device_group_.erase(it);
  } else {  // attached but never opened (the open failed): its group may still be ours
    std::error_code ec;
    auto link = std::filesystem::read_symlink(
        std::filesystem::path(sysfs_root_) / "bus/pci/devices" / bdf.str() / "iommu_group", ec);
    if (ec) return;
    try {
      group = std::stoi(link.filename().string());
    } catch (const std::exception&) {
      return;
    }
  }
  hot_reset_done_.erase(bdf.str());
  for (const auto& [other, other_group] : device_group_)
    if (other_group == group) return;  // another function of the group is still in the VM
  auto fd = groups_.find(group);
  if (fd == groups_.end()) return;
  if (on_group) on_group(fd->second, false);
  ioctl(fd->second, VFIO_GROUP_UNSET_CONTAINER);
  close(fd->second);
  groups_.erase(fd);
  iova_ranges_.reset();
  if (groups_.empty()) {  // the kernel released the IOMMU context with its last group
    iommu_set_ = false;
    mapped_.clear();
  }
}

void Container::map_dma(const DmaRegion& region) {
  const uint64_t iova = region.iova, size = region.size;
  std::lock_guard g(lock_);
  if (!iommu_set_) throw VfioError("DMA mapping needs a passthrough device opened first (no IOMMU selected yet)");
  vfio_iommu_type1_dma_map m{};
  m.argsz = sizeof m;
  m.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE;
  m.vaddr = reinterpret_cast<uint64_t>(region.host);  // the kernel's VFIO shares passvm's address space
  m.iova = iova;
  m.size = size;
  if (ioctl(fd_, VFIO_IOMMU_MAP_DMA, &m) < 0) {
    int e = errno;
    if (e == ENOMEM || e == EPERM) {
      rlimit rl{};
      getrlimit(RLIMIT_MEMLOCK, &rl);
      std::string limit = rl.rlim_cur == RLIM_INFINITY ? "unlimited" : fmt::format("{} KiB", rl.rlim_cur / 1024);
      throw VfioError(fmt::format("cannot pin guest memory for DMA (iova {:#x}, {} MiB): {}; the locked-memory "
                                  "limit (RLIMIT_MEMLOCK) is {}: raise it with `ulimit -l unlimited` or run as root",
                                  iova, size >> 20, err(e), limit),
                      e);
    }
    throw VfioError(fmt::format("VFIO_IOMMU_MAP_DMA (iova {:#x}, {} bytes) failed: {}", iova, size, err(e)), e);
  }
  mapped_[iova] = size;
}

void Container::unmap_dma(uint64_t iova, uint64_t size) {
  std::lock_guard g(lock_);
  vfio_iommu_type1_dma_unmap u{};
  u.argsz = sizeof u;
  u.iova = iova;
  u.size = size;
  if (fd_ >= 0) ioctl(fd_, VFIO_IOMMU_UNMAP_DMA, &u);
  mapped_.erase(iova);
}

}  // namespace passvm::vfio
