# passvm against the reference, in one L1 boot: QEMU and then passvm pass the same NVMe
# controller (00:03.0) and e1000e (00:04.0) through to the same L2 with the same checks.
# Every check must pass under passvm; "compare" reports passvm/QEMU ratios (VMM start to
# L2 init, peak RSS, nvme time) because absolute times in the lab are noise. msixhost: each VMM
# gave the devices only the host MSI-X vectors L2 uses (the NVMe's table has 65 entries, L2 uses a few).
# Run with: lab/run --passvm BUILD/src/cli/passvm passvm-reference
# lab-expect: qemu.vmm qemu.msixhost pv.vmm pv.boot pv.cpus pv.mem pv.lspci pv.nvme pv.ping pv.irqs pv.msixhost compare
# lab-timeout: 1020

if [[ -z $PASSVM || ! -x $PASSVM ]]; then
    result pv.vmm fail detail="no passvm binary: run lab/run --passvm BUILD/src/cli/passvm"
    exit 1
fi
for bdf in 0000:00:03.0 0000:00:04.0; do
    bind_vfio $bdf || { result pv.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done
CHECKS=cpus,mem,lspci,nvme,ping,irqs
EXTRA="lab.cpus=2 lab.mem_mb=512 lab.expect_pci=1b36:0010,8086:10d3"

run_l2 qemu --timeout 480 -- \
    qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$(l2_append $CHECKS $EXTRA)" \
    -device vfio-pci,host=0000:00:03.0 -device vfio-pci,host=0000:00:04.0
msix_host_check qemu.msixhost qemu

run_l2 pv --timeout 480 -- \
    "$PASSVM" -c 2 -m 512M -s 0,hostbridge -s 3,passthru,0000:00:03.0 -s 4,passthru,0000:00:04.0 \
    -l com1,stdio --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$(l2_append $CHECKS $EXTRA)" labvm
rc=$?
msix_host_check pv.msixhost pv

l2_compare compare qemu pv
exit $rc
