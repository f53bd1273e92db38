# Lab maintenance, not part of the suite: boots L2 again and again (passvm and QEMU in turn,
# the NVMe and an e1000e passed through, so L2's RAM is pinned) to reproduce failures of the
# nested machine itself, such as an L1 lockup. ROUNDS boots per VMM, about a minute a round.
# lab-timeout: 4000

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary soak.vmm
for bdf in 0000:00:03.0 0000:00:04.0; do
    bind_vfio $bdf || { result soak.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done
ROUNDS=40
APPEND="$(l2_append cpus lab.cpus=2 lab.expect_pci=1b36:0010,8086:10d3)"
for i in $(seq 1 "$ROUNDS"); do
    run_l2 "soakpv$i" --timeout 240 -- \
        "$PASSVM" -c 2 -m 512M -s 0,hostbridge -s 3,passthru,0000:00:03.0 -s 4,passthru,0000:00:04.0 -l com1,stdio \
        --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$APPEND" labvm
    run_l2 "soakq$i" --timeout 240 -- \
        qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 \
        -nodefaults -nographic -no-reboot -serial stdio -monitor none \
        -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$APPEND" \
        -device vfio-pci,host=0000:00:03.0 -device vfio-pci,host=0000:00:04.0
done
