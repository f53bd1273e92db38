# Benchmark, not in the test suite (it takes minutes): the 64 GiB BAR of L1's ivshmem (00:09.0) and
# edu (00:06.0) passed through by QEMU and then by passvm to the same L2, which writes the BAR's ends
# and DMAs into it from edu. QEMU maps a BAR into the IOMMU with the guest's vCPU waiting, each time
# the guest turns decoding on (firmware and kernel both do); passvm maps it in the background.
# compare: passvm/QEMU ratios, VMM start to L2 init first of all.
# Run with: lab/run --passvm BUILD/src/cli/passvm bigbar-compare
# lab-expect: qbig.vmm qbig.bigbar qbig.p2p cbig.vmm cbig.bigbar cbig.p2p compare
# lab-timeout: 1500
# lab-dma-faults: deliberate

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary cbig.vmm
for bdf in 0000:00:06.0 0000:00:09.0; do
    bind_vfio $bdf || { result cbig.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done
APPEND="$(l2_append lspci,bigbar,p2p lab.expect_pci=1af4:1110,1234:11e8 lab.bigbar=$RANDOM$RANDOM lab.p2p=on)"

# QEMU's 64-bit hole must hold the 64 GiB BAR at its alignment, as L1's does.
run_l2 qbig --timeout 900 -- \
    qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 -global q35-pcihost.pci-hole64-size=256G \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$APPEND" \
    -device vfio-pci,host=0000:00:06.0 -device vfio-pci,host=0000:00:09.0

run_l2 cbig --timeout 600 -- \
    "$PASSVM" -v -c 2 -m 512M -s 0,hostbridge -s 6,passthru,0000:00:06.0 -s 9,passthru,0000:00:09.0 \
    -l com1,stdio --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$APPEND" labvm
rc=$?
l2_compare compare qbig cbig
exit $rc
