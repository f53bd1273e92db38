# Benchmark: a large guest with a device passed through. QEMU and passvm boot an 8 GiB L2 with the
# NVMe, in the order QEMU, passvm, passvm, QEMU, and run_l2 --start-figures times their start-up from
# outside, the same way for both: guest RAM resident, guest RAM pinned for DMA, the guest's first
# instruction, L2's init; plus peak memory beyond guest RAM, and passvm's own -v step times
# (NAME.steps). bench/run --large prints the table. Not part of the test suite: figures are not
# asserted. For a quick trial, lab/run --env BENCH_LARGE_MEM_MB=1024 gives L2 less RAM.
# One CPU unless asked for more: under Debian's QEMU 7.2 as L0, an L1 with two panicked in 7 of 15
# boots ("corrupted stack end detected inside scheduler"). bench/run --large runs it with two, under
# the newer L0 QEMU that lab/l0-qemu/build makes, so that passvm's allocation spreads over two workers.
# lab-l1: memory=12288 cpus=1
# lab-expect: qemu-warm.vmm pv-warm.vmm l1.prefault qemu-large.vmm l1.alloc pv-large.vmm pv-large.steps l1.alloc2 pv-large2.vmm pv-large2.steps qemu-large2.vmm
# lab-timeout: 4800

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary pv-large.vmm
MB=${BENCH_LARGE_MEM_MB:-8192}
[[ $MB =~ ^[0-9]+$ && $MB -ge 256 ]] || {
    result large.setup fail detail="BENCH_LARGE_MEM_MB='$MB': give L2's RAM in MiB, 256 or more"; exit 1; }
APPEND="$(l2_append mem,nvme lab.mem_mb=$MB)"
QEMU=(qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m "$MB" -smp 2 -nodefaults -nographic -no-reboot
      -serial stdio -monitor none -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$APPEND"
      -device vfio-pci,host=0000:00:03.0)
# BENCH_LARGE_START_FIGURES=0: the same runs without run_l2's outside timing (no ftrace in L1).
SF=(--start-figures)
[[ ${BENCH_LARGE_START_FIGURES:-1} == 0 ]] && SF=()
PV=("$PASSVM" -c 2 -m "${MB}M" -s 0,hostbridge -s 3,passthru,0000:00:03.0 -l com1,stdio -v --stats
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$APPEND" large)

# Controls, without a device: a short boot of each VMM, with the same outside figures. Nothing is pinned
# without VFIO (peak_vmlck_kb 0), so VmLck in the timed runs is VFIO's pinning; they also fill passvm's
# kernel cache (src/boot/kernel_cache.h), as a host running VMs would have it, so that both passvm runs
# start the same way.
export PASSVM_CACHE_DIR=$(mktemp -d /tmp/passvm-large-cache.XXXXXX)
WARM="$(l2_append cpus lab.mem_mb=256)"
run_l2 qemu-warm "${SF[@]}" --timeout 600 -- qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 256 -smp 1 \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$WARM"
run_l2 pv-warm "${SF[@]}" --timeout 600 -- "$PASSVM" -c 1 -m 256M -s 0,hostbridge -l com1,stdio \
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$WARM" warm

# L1's free memory is written once before the timed runs (lab/l1/prefault.py says why), and again
# before each of them (RUN_L2_WASH), so that every run finds L1's RAM alike.
/usr/bin/python3 "$LAB_DIR/l1/prefault.py" --result l1.prefault
export RUN_L2_WASH=1

# The floor for passvm's allocation of guest RAM: L1 itself allocating as much, with as many threads as
# passvm's workers and the same way (lab/l1/populate.py), on memory washed as it is for the VMMs. Run
# right before each passvm run, so that each of passvm's figures has its floor from the same minutes.
l1_alloc() {
    /usr/bin/python3 "$LAB_DIR/l1/prefault.py" > /dev/null
    /usr/bin/python3 "$LAB_DIR/l1/populate.py" --mib "$MB" --result "$1"
}

bind_vfio 0000:00:03.0 || { result large.setup fail detail="cannot bind 0000:00:03.0 to vfio-pci"; exit 1; }
# Each run is bounded by the scenario's limit: under TCG an 8 GiB guest takes minutes to start.
run_l2 qemu-large "${SF[@]}" --timeout 1500 -- "${QEMU[@]}"
l1_alloc l1.alloc
run_l2 pv-large "${SF[@]}" --timeout 1500 -- "${PV[@]}"
pv_steps pv-large.steps pv-large
l1_alloc l1.alloc2
run_l2 pv-large2 "${SF[@]}" --timeout 1500 -- "${PV[@]}"
pv_steps pv-large2.steps pv-large2
run_l2 qemu-large2 "${SF[@]}" --timeout 1500 -- "${QEMU[@]}"
rm -rf "$PASSVM_CACHE_DIR"
