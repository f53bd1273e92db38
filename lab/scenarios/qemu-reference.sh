# Reference scenario: QEMU itself is the VMM inside L1. It passes the NVMe controller
# and one e1000e through to L2 with vfio-pci; L2 writes and reads back 16 MiB on the
# NVMe with O_DIRECT and pings L1's own e1000e over the lab's virtual hub. Its figures
# (VMM start to L2 init, nvme ms, peak RSS) are what passvm is compared with. Its RTC interrupt
# check (qemu.rtcirq) is the reference for passvm-boot's.
# lab-expect: qemu.vmm qemu.boot qemu.nvme qemu.ping qemu.lspci qemu.irqs qemu.rtcirq qemu.console
# lab-timeout: 540

bind_vfio 0000:00:03.0 || { result qemu.setup fail detail="cannot bind 0000:00:03.0 (nvme) to vfio-pci"; exit 1; }
bind_vfio 0000:00:04.0 || { result qemu.setup fail detail="cannot bind 0000:00:04.0 (e1000e) to vfio-pci"; exit 1; }

run_l2 qemu --timeout 480 --type 'echo L2CON$((40+2))' -- \
    qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" \
    -append "$(l2_append cpus,mem,lspci,nvme,ping,irqs,rtcirq,console lab.cpus=2 lab.mem_mb=512 lab.expect_pci=1b36:0010,8086:10d3)" \
    -device vfio-pci,host=0000:00:03.0 \
    -device vfio-pci,host=0000:00:04.0
