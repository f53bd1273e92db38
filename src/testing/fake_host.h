// testing: one host used by most tests, shaped like the lab's q35 machine
// plus a GPU whose audio function shares its IOMMU group (with a bridge).
#pragma once

#include "testing/fake_sysfs.h"

namespace passvm::testing {

// Users for --user: alice (1000) is in kvm, bob (1001) is not.
inline void add_users(FakeSysfs& fake) {
  fake.write("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
                            "bob:x:1001:1001::/home/bob:/bin/sh\n");
  fake.write("/etc/group", "root:x:0:\nkvm:x:108:alice\nalice:x:1000:\nbob:x:1001:\n");
}

inline void populate_host(FakeSysfs& fake) {
  fake.add_device("0000:00:00.0", "8086", "29c0", "060000", "", 0);
  fake.add_device("0000:00:01.0", "1234", "1111", "030000", "bochs-drm", 1);
  fake.write("/sys/devices/pci0000:00/0000:00:01.0/boot_vga", "1\n");
  fake.add_device("0000:00:03.0", "1b36", "0010", "010802", "nvme", 2);
  fake.add_device("0000:00:04.0", "8086", "10d3", "020000", "e1000e", 3);
  fake.add_device("0000:00:05.0", "1234", "11e8", "00ff00", "", 4);
  fake.add_device("0000:00:06.0", "10de", "1b80", "030000", "nouveau", 5);
  fake.add_device("0000:00:06.1", "10de", "10f0", "040300", "snd_hda_intel", 5);
  fake.add_device("0000:00:1c.0", "8086", "2918", "060400", "pcieport", 5);
  fake.add_block("0000:00:03.0", "nvme0n1");
  fake.add_block("0000:00:03.0", "nvme0n1p1", "nvme0n1");
  fake.add_block("0000:00:03.0", "nvme0n1p2", "nvme0n1");
  add_users(fake);
}

}  // namespace passvm::testing
