# Reference for the harder device features, with QEMU as the VMM inside L1: the edu
# device (DMA engine driven from L2 into L2's RAM through the emulated VT-d), the e1000e
# register window in its I/O BAR compared with its MMIO BAR, config space as L2 sees it,
# and the interrupt mode the e1000e driver got. passvm scenarios run the same checks.
# lab-expect: qdev.vmm qdev.edu qdev.ping qdev.iobar qdev.config qdev.irqs
# lab-timeout: 540

for bdf in 0000:00:04.0 0000:00:06.0; do
    bind_vfio $bdf || { result qdev.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done

run_l2 qdev --timeout 480 -- \
    qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" \
    -append "$(l2_append lspci,edu,ping,irqs,iobar,config lab.expect_pci=1234:11e8,8086:10d3)" \
    -device vfio-pci,host=0000:00:04.0 \
    -device vfio-pci,host=0000:00:06.0
