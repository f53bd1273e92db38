# Lab maintenance, not part of the suite: boots bench-large's two warm-up guests (QEMU's and passvm's,
# 256 MiB, one vCPU, no device, run_l2 --start-figures) again and again, in turn, to reproduce
# failures of the nested machine that bench-large's L1 shows (run it as bench/run --large does:
# lab/run --l1-cpus 2 --l0-qemu "$(lab/l0-qemu/build)" soak-start). A guest that hangs is killed after
# SOAK_START_TIMEOUT s (default 300) with its NAME.stuck (run_l2.py's stuck_report: the VMM's threads,
# L1 KVM's counters, the instructions L1's KVM emulated). SOAK_START_ROUNDS boots per VMM (default 20),
# about half a minute each.
# lab-l1: memory=12288 cpus=1
# lab-expect: soakq1.vmm soakpv1.vmm
# lab-timeout: 5400

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary soakpv1.vmm
ROUNDS=${SOAK_START_ROUNDS:-20}
TIMEOUT=${SOAK_START_TIMEOUT:-300}
for v in ROUNDS TIMEOUT; do
    [[ ${!v} =~ ^[0-9]+$ ]] && (( 10#${!v} >= 1 )) || {
        result soak.setup fail detail="SOAK_START_$v='${!v}': give a whole number, 1 or more"; exit 1; }
done
export PASSVM_CACHE_DIR=$(mktemp -d /tmp/passvm-soak-cache.XXXXXX)
WARM="$(l2_append cpus lab.mem_mb=256)"
for i in $(seq 1 "$ROUNDS"); do
    run_l2 "soakq$i" --start-figures --timeout "$TIMEOUT" -- qemu-system-x86_64 -enable-kvm -M q35 -cpu host \
        -m 256 -smp 1 -nodefaults -nographic -no-reboot -serial stdio -monitor none -kernel "$L2_KERNEL" \
        -initrd "$L2_INITRD" -append "$WARM"
    run_l2 "soakpv$i" --start-figures --timeout "$TIMEOUT" -- "$PASSVM" -c 1 -m 256M -s 0,hostbridge \
        -l com1,stdio --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$WARM" warm
done
rm -rf "$PASSVM_CACHE_DIR"
