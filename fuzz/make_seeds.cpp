// Writes the seed corpus (fuzz/corpus/<target>/): small, hand-made valid inputs that take each target
// past its first checks. Run once when a target or its input format changes:
//   build-fuzz/fuzz/fuzz_make_seeds fuzz/corpus
// The files are committed; fuzz/run copies them before each run so the fuzzer's finds stay out of git.
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "boot/kernel_cache.h"
#include "boot/test_image.h"
#include "fuzz/ops.h"
#include "fuzz/passthru_harness.h"
#include "memory/layout.h"

namespace {

namespace fs = std::filesystem;
using namespace passvm;
using fuzz::Op;
using fuzz::size_code;

fs::path out_dir;

void put(const std::string& target, const std::string& name, const std::vector<uint8_t>& bytes) {
  fs::create_directories(out_dir / target);
  std::ofstream f(out_dir / target / name, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::vector<uint8_t> bytes_of(uint8_t first, const std::string& s) {
  std::vector<uint8_t> v{first};
  v.insert(v.end(), s.begin(), s.end());
  return v;
}

// ---- passthrough: config space and MSI-X ----

Op cfg(uint8_t kind, uint32_t offset, int size, uint32_t value, uint64_t wide = 0) {
  return {kind, size_code(size), static_cast<uint16_t>(offset), value, wide};
}

// Firmware's walk over the device: size and place every BAR and the ROM, turn decoding on, read the header
// and both capability lists.
void boot_firmware(std::vector<uint8_t>& in) {
  for (uint32_t bar = 0; bar < 7; bar++) fuzz::append(in, cfg(2, 0, 4, bar, bar == 6 ? 0xfeb00001 : 0));
  for (uint32_t r = 0; r < 6; r++) fuzz::append(in, cfg(4, 0, 4, r, r));
  fuzz::append(in, cfg(3, 0, 2, 0x0007));
  for (uint32_t off = 0; off < 0x40; off += 4) fuzz::append(in, cfg(0, off, 4, 0));
  for (uint32_t off = 0x40; off < 0x100; off += 4) fuzz::append(in, cfg(0, off, 4, 0));
  for (uint32_t off = 0x100; off < 0x160; off += 4) fuzz::append(in, cfg(0, off, 4, 0));
}

// What a guest MSI-X driver does: program and unmask vectors through the table, enable, read the PBA.
void msix_driver(std::vector<uint8_t>& in, uint32_t vectors) {
  // bar_op (kinds 0xe0-0xef): size bits 0-2 bar (7: the MSI-X BAR), 3-4 anchor (0: table, 1: PBA),
  // 5-7 length (0: 4 bytes); kind bit 0: write.
  auto table = [&](bool write, int16_t off, uint32_t v) {
    fuzz::append(in, Op{static_cast<uint8_t>(0xe0 | (write ? 1 : 0)), 7, static_cast<uint16_t>(off), v, 0});
  };
  fuzz::append(in, cfg(6, 0, 2, 0xc000));  // enable with the function masked
  for (uint32_t i = 0; i < vectors; i++) {
    table(true, static_cast<int16_t>(i * 16), 0xfee00000 + i * 0x1000);
    table(true, static_cast<int16_t>(i * 16 + 4), 0);
    table(true, static_cast<int16_t>(i * 16 + 8), 0x40 + i);
    table(true, static_cast<int16_t>(i * 16 + 12), 0);
    table(false, static_cast<int16_t>(i * 16), 0);
  }
  fuzz::append(in, cfg(6, 0, 2, 0x8000));  // function mask off
  table(true, 12, 1);                      // mask vector 0 again
  fuzz::append(in, Op{0xe0, 7 | 1 << 3, 0, 0, 0});  // read the PBA
  fuzz::append(in, Op{0xe0, 7 | 2 << 5, 0, 0, 0});  // 8-byte read of entry 0
}

void passthru_seeds() {
  const uint8_t variants[][2] = {{0x00, 0}, {0x09, 1}, {0x16, 2}, {0x2b, 3}, {0x45, 0}, {0x8e, 1}, {0xff, 3}};
  for (auto [v, v2] : variants) {
    std::vector<uint8_t> in{v, v2};
    boot_firmware(in);
    // MSI: address, data, enable with all vectors; then off again.
    fuzz::append(in, cfg(5, 4, 4, 0xfee01000));
    fuzz::append(in, cfg(5, 8, 4, 0));
    fuzz::append(in, cfg(5, v & 1 ? 12 : 8, 2, 0x41));
    fuzz::append(in, cfg(5, 2, 2, 0x0051));
    fuzz::append(in, cfg(0, 0x50, 4, 0));
    fuzz::append(in, cfg(5, 2, 2, 0x0000));
    put("config_space", fmt::format("firmware-msi-{:02x}", v), in);

    std::vector<uint8_t> m{v, v2};
    boot_firmware(m);
    msix_driver(m, std::min(fuzz::DeviceVariant(v, v2).msix_entries, 4u));
    put("msix", fmt::format("driver-{:02x}", v), m);
    if (v == 0x00 || v == 0x8e) put("config_space", fmt::format("msix-{:02x}", v), m);
  }
  // The guest moves a BAR and the ROM while decoding is on, then turns it off.
  std::vector<uint8_t> in{0x08, 0x03};
  boot_firmware(in);
  fuzz::append(in, cfg(1, 0x20, 4, 0xc0100000));
  fuzz::append(in, cfg(1, 0x30, 4, 0xc0200001));
  fuzz::append(in, cfg(1, 0x14, 4, 0x00000011));
  fuzz::append(in, cfg(3, 0, 2, 0x0000));
  fuzz::append(in, cfg(1, 0x04, 1, 0x06));
  // Reads through the traps: the ROM (trapped without read-only memory), the I/O BAR, the MSI-X page.
  for (uint16_t trap = 0; trap < 4; trap++) fuzz::append(in, Op{0xf0, 0, trap, 0, 0x10});
  put("config_space", "move-bars", in);
}

// ---- bus ----

void bus_seeds() {
  // add: size bits 0-1 address kind (0: raw), 2-3 size kind (1: value), 4-6 device.
  std::vector<uint8_t> in;
  fuzz::append(in, Op{0, 1 << 2 | 0 << 4, 0, 0x1000, 0xfee00000});
  fuzz::append(in, Op{0, 1 << 2 | 1 << 4, 0, 0x100, 0xfee01000});
  fuzz::append(in, Op{0, 1 << 2 | 2 << 4, 0, 0x8, 0x3f8});
  fuzz::append(in, Op{0, 1 << 2 | 3 << 4, 0, 0x1000, 0xfee00800});      // overlaps: refused
  fuzz::append(in, Op{0, 2 << 2 | 4 << 4, 0, 0, 0xfffffffffffff000});    // up to the top: refused
  fuzz::append(in, Op{2, 1 << 2, 0, 0x2000, 0xfedff000});               // overlaps?
  fuzz::append(in, Op{3, 0, 0, 4, 0xfee00ffe});                          // read straddling two ranges
  fuzz::append(in, Op{3, 0, 0, 4, 0xfee00ffc});
  fuzz::append(in, Op{4, 0, 0, 2, 0x3fe});
  fuzz::append(in, Op{3, 0, 0, 0, 0xfee01100});                          // zero-length, just past a range
  fuzz::append(in, Op{3, 3, 0, 8, 0});                                   // near the top
  fuzz::append(in, Op{1, 0, 0, 0, 0xfee01000});                          // remove
  fuzz::append(in, Op{3, 2, 0x8001, 4, 0});                              // at a range's end
  put("bus", "ranges", in);
}

// ---- virtio console ----

void virtio_seeds() {
  // Operations of fuzz/virtio_console.cpp: kind 2 a descriptor (size bit 0 the queue, bit 1 a buffer
  // address; value: len | flags << 16; offset: index | next << 8), 3 publish (size bit 3: notify), 4 input.
  std::vector<uint8_t> tx;
  fuzz::append(tx, Op{2, 1 | 2, 0x0100, 6 | 1 << 16, 0});  // two-descriptor chain 0 -> 1
  fuzz::append(tx, Op{2, 1 | 2, 0x0001, 8, 0x100});
  fuzz::append(tx, Op{3, 1 | 8, 0, 0, 0});                 // publish head 0 on the transmit queue, notify
  fuzz::append(tx, Op{0, 0, 0x64 / 4, 1, 0});               // acknowledge the interrupt
  fuzz::append(tx, Op{2, 1 | 2, 0x0202, 4, 0x200});
  fuzz::append(tx, Op{3, 1 | 8, 2, 0, 0});
  put("virtio_console", "transmit", tx);
  std::vector<uint8_t> rx;
  fuzz::append(rx, Op{4, 0, 0, 5, 0});                      // input before any buffer: waits
  fuzz::append(rx, Op{2, 0 | 2, 0x0000, 4 | 2 << 16, 0});   // a writable buffer of 4 bytes
  fuzz::append(rx, Op{2, 0 | 2, 0x0001, 4 | 2 << 16, 0x10});
  fuzz::append(rx, Op{3, 0 | 8, 0, 0, 0});
  fuzz::append(rx, Op{3, 0 | 8, 1, 0, 0});
  fuzz::append(rx, Op{4, 0, 0, 7, 0});
  fuzz::append(rx, Op{5, 2, 0, 0, 0});                      // reset and set up again
  fuzz::append(rx, Op{4, 0, 0, 3, 0});
  put("virtio_console", "receive", rx);
}

// ---- kernel loader ----

void loader_seeds() {
  boot::testing::ImageSpec spec;
  spec.setup_sects = 1;
  spec.kernel_bytes = 0x400;
  auto classic = boot::testing::make_bzimage(spec);
  classic.insert(classic.begin(), 4);  // for the guest's decompressor
  put("kernel_loader", "bzimage-classic", classic);

  const uint64_t paddr = 16 * layout::MiB;
  std::vector<uint8_t> text(600);
  for (size_t i = 0; i < text.size(); i++) text[i] = static_cast<uint8_t>(i * 13 + 5);
  const auto elf = boot::testing::make_elf(paddr, text, 0x2000, paddr + 0x40);
  auto with_payload = [&](const std::vector<uint8_t>& payload) {
    auto img = boot::testing::bzimage_with_payload(payload, static_cast<uint32_t>(elf.size()), spec);
    img.insert(img.begin(), 0);
    return img;
  };
  put("kernel_loader", "bzimage-xz", with_payload(boot::testing::xz(elf)));
  put("kernel_loader", "bzimage-gzip", with_payload(boot::testing::gz(elf)));
  put("kernel_loader", "bzimage-elf", with_payload(elf));
  std::vector<uint8_t> stream{1};
  stream.insert(stream.end(), elf.begin(), elf.end());
  put("kernel_loader", "vmlinux", stream);

  // A cache file as passvm writes it, by the cache itself.
  char tmpl[] = "/tmp/passvm-seeds-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::vector<uint8_t> key(100, 1);
  {
    boot::KernelCache cache(dir, key);
    cache.record(paddr, text);
    boot::VmlinuxLayout l;
    l.entry = paddr + 0x40;
    l.segments = {{paddr, sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr), text.size(), text.size() + 0x2000}};
    cache.commit(l);
  }
  const std::string path = boot::KernelCache(dir, key).path();
  std::ifstream f(path, std::ios::binary);
  std::vector<uint8_t> cached{2};
  cached.insert(cached.end(), std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  put("kernel_loader", "cache-file", cached);
  fs::remove_all(dir);
}

// ---- text inputs ----

void text_seeds(const fs::path& source) {
  auto text = [](const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); };
  put("pptdevs", "plain", text("# NVMe and the NIC\n0000:03:00.0\n0000:04:00.0 0000:04:00.1\n"));
  put("pptdevs", "bhyve", text("pptdevs=\"1/0/0 2/0/0\"\npptdevs2='3/0/0'\n  pptdevs3 = 5/0/0   # the GPU\n"));
  put("pptdevs", "short-forms", text("03:00.0\n0a:1f.7\t\r\nFFFF:ff:1F.7\n"));

  const std::map<std::string, std::string> placeholders = {{"@DEVICE@", "0000:00:04.0"}, {"@DEVICE_ID@", "nvme0"}};
  for (const auto& e : fs::directory_iterator(source / "src/api/testdata/kata-clh")) {
    const std::string name = e.path().filename().string();
    uint8_t which = name.rfind("vm.create", 0) == 0 ? 0 : name == "vm.add-device.json" ? 1 : name == "vm.remove-device.json" ? 2 : 9;
    if (which == 9) continue;
    std::stringstream ss;
    ss << std::ifstream(e.path()).rdbuf();
    std::string body = ss.str();
    for (const auto& [from, to] : placeholders)
      for (size_t at; (at = body.find(from)) != std::string::npos;) body.replace(at, from.size(), to);
    put("api_request", name, bytes_of(which, body));
  }
  put("api_request", "vm.add-device.with-id", bytes_of(1, R"({"path": "/sys/bus/pci/devices/0000:03:00.0/", "id": "gpu0", "pci_segment": 0})"));
  put("api_request", "vm.create.devices", bytes_of(0, R"({"cpus": {"boot_vcpus": 2, "max_vcpus": 2}, "memory": {"size": 1073741824, "hugepages": true, "hugepage_size": 2097152},
 "payload": {"kernel": "/boot/vmlinuz", "initramfs": "/boot/initrd.img", "cmdline": "console=ttyS0"}, "serial": {"mode": "Tty"},
 "devices": [{"path": "/sys/bus/pci/devices/0000:03:00.0/", "id": "nvme0"}, {"path": "/sys/bus/pci/devices/0000:04:00.0"}],
 "platform": {"num_pci_segments": 1, "vfio_p2p_dma": false}, "rng": {"src": "/dev/urandom"}, "pci_segments": [{"pci_segment": 0}]})"));
  put("api_request", "host_bdf-bhyve", bytes_of(3, "3/0/0"));
  put("api_request", "host_bdf-sysfs", bytes_of(3, "/sys/bus/pci/devices/0000:00:04.0/"));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 1;
  }
  out_dir = argv[1];
  passthru_seeds();
  bus_seeds();
  virtio_seeds();
  loader_seeds();
  text_seeds(PASSVM_SOURCE_DIR);
  return 0;
}
