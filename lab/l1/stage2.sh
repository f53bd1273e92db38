#!/bin/bash
# L1 stage 2: runs inside the chroot (host root + tmpfs overlay) on the lab's L1 guest.
# It prepares L1 the way a passthrough host would be prepared (kvm, vfio), gives each
# scenario's early hook a chance to claim devices before the host drivers load, then
# loads the host drivers and runs the scenarios one after another. Progress markers
# (LABL1 / LABSCENARIO lines) let lab/run tell a failed scenario from a dead one.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8

arg() {
    local w
    for w in $(cat /proc/cmdline); do
        [[ $w == "$1="* ]] && { echo "${w#*=}"; return; }
    done
}

LAB_DIR=$(arg lab.dir)
IFS=, read -r -a SCENARIOS <<<"$(arg lab.scenarios)"
export LAB_DIR
export PASSVM=$(arg lab.passvm)
export L2_KERNEL=$(arg lab.l2kernel)
export L2_INITRD=$(arg lab.l2initrd)
export LAB_SCENARIO_TIMEOUT=$(arg lab.stimeout)
: "${LAB_SCENARIO_TIMEOUT:=300}"
export LAB_OUT_ROOT=/run/lab-out
export LAB_L1_IFACE_BDF=0000:00:05.0
export LAB_L1_LINKLOCAL=fe80::5054:ff:fe12:3405
# lab/run --env NAME=VALUE: variables for the scenarios.
[[ -f $LAB_OUT_ROOT/env.sh ]] && source "$LAB_OUT_ROOT/env.sh"

say() { echo "LABL1 $*"; }
marker() { echo "LABSCENARIO {\"scenario\":\"$1\",\"event\":\"$2\"${3:+,$3}}"; }

say "stage2 start uptime=$(cut -d' ' -f1 /proc/uptime)"
hostname lab-l1
# Heartbeat: lab/run takes a long silence for a hung L1 (TCG's nested SVM can lock it up).
( while sleep 20; do say "alive uptime=$(cut -d' ' -f1 /proc/uptime)"; done ) &

# Host side of passthrough. Failures are reported but do not stop the run:
# each scenario's checks say precisely what did not work.
for m in kvm_amd vfio vfio_iommu_type1 vfio-pci; do
    modprobe "$m" || say "warning: modprobe $m failed"
done
[[ -c /dev/kvm ]] || say "warning: /dev/kvm missing"
[[ -c /dev/vfio/vfio ]] || say "warning: /dev/vfio/vfio missing"

for s in "${SCENARIOS[@]}"; do
    early=$LAB_DIR/scenarios/$s.early.sh
    if [[ -f $early ]]; then
        mkdir -p "$LAB_OUT_ROOT/$s"
        say "early hook $s"
        LAB_SCENARIO=$s LAB_OUT=$LAB_OUT_ROOT/$s timeout -k 5 120 \
            bash -c 'source "$LAB_DIR/scenarios/lib.sh"; source "$1"' early "$early" 2>&1
        marker "$s" early "\"rc\":$?"
    fi
done

# Host drivers load only now, so early hooks could claim devices first.
for m in nvme e1000e; do modprobe "$m" || say "warning: modprobe $m failed"; done
sleep 1
l1if=$(ls "/sys/bus/pci/devices/$LAB_L1_IFACE_BDF/net" 2>/dev/null | head -n1)
if [[ -n $l1if ]]; then
    ip link set "$l1if" up
    (   # carrier and duplicate address detection take seconds; L2 needs minutes to ping us
        for _ in $(seq 100); do
            a=$(ip -6 addr show dev "$l1if" scope link)
            [[ $a == *inet6* && $a != *tentative* ]] && break
            sleep 0.2
        done
        say "l1 interface $l1if up: $(ip -6 -o addr show dev "$l1if" scope link | awk '{print $4}')"
    ) &
else
    say "warning: no network interface on $LAB_L1_IFACE_BDF"
fi
# Kernel text symbols (L1 and L2 boot the same kernel with nokaslr): when L1 hangs, lab/run names
# the function its vCPU is stuck in with these.
grep ' [tTwW] ' /proc/kallsyms >"$LAB_OUT_ROOT/kallsyms" &
# Where an L2 vCPU triple-faulted: L1's KVM sees the fault as one exit (SVM's shutdown intercept, VMX's
# triple fault exit) whose RIP is where the guest was, and KVM on AMD then resets the vCPU, so nothing
# else keeps it. A trace instance of its own holds just those exits for run_l2.py, which reads it after
# each VMM run. Enabled here, once, before any guest runs: enabling an event patches kernel text, which
# can hang L1 under TCG if a CPU meets the patch (run_l2.py, FirstEntryTrace). Every exit of every
# guest now runs the event and its filter in L1 (some hundreds of instructions; an exit takes
# 80-180 us of L1's time), under either VMM.
(
    t=/sys/kernel/tracing
    [[ -d $t/events ]] || mount -t tracefs nodev $t
    mkdir -p $t/instances/lab-shutdown && cd $t/instances/lab-shutdown &&
        echo mono >trace_clock &&
        echo '(isa == 2 && exit_reason == 127) || (isa == 1 && exit_reason == 2)' >events/kvm/kvm_exit/filter &&
        echo 1 >events/kvm/kvm_exit/enable
) 2>&1 || say "warning: no trace of L2's triple faults (tracefs instance lab-shutdown)"
# A guest that stops making progress while L1's KVM emulates one of its instructions again and again
# (NAME.stuck's counters: insn_emulation and pf_guest rising together) is named by these two events:
# the instruction L1's KVM emulated (rip and bytes) and what it injected. Emulation is rare (MMIO to a
# device the VMM emulates, string I/O), so a small ring in overwrite mode holds the last few thousand,
# and run_l2.py reads it only for a VMM it is about to kill for a timeout. Enabled here, once, for the
# same reason as above.
(
    t=/sys/kernel/tracing
    mkdir -p $t/instances/lab-emulate && cd $t/instances/lab-emulate &&
        echo mono >trace_clock &&
        echo 256 >buffer_size_kb &&
        echo 1 >events/kvm/kvm_emulate_insn/enable &&
        echo 1 >events/kvm/kvm_inj_exception/enable
) 2>&1 || say "warning: no trace of the instructions L1's KVM emulates (tracefs instance lab-emulate)"
dmesg -n 1  # keep kernel messages from splitting result lines on the console
say "ready uptime=$(cut -d' ' -f1 /proc/uptime)"

source "$LAB_DIR/scenarios/lib.sh"
for s in "${SCENARIOS[@]}"; do
    script=$LAB_DIR/scenarios/$s.sh
    export LAB_SCENARIO=$s LAB_OUT=$LAB_OUT_ROOT/$s
    mkdir -p "$LAB_OUT"
    limit=$(sed -n 's/^# lab-timeout: *\([0-9]\+\).*/\1/p' "$script" 2>/dev/null | head -n1)
    limit=${limit:-$LAB_SCENARIO_TIMEOUT}
    marker "$s" start "\"timeout\":$limit"
    t0=$(date +%s.%N)
    if [[ ! -f $script ]]; then
        rc=127
    else
        timeout -k 10 "$limit" bash -c 'source "$LAB_DIR/scenarios/lib.sh"; source "$1"' "$s" "$script" 2>&1
        rc=$?
    fi
    t1=$(date +%s.%N)
    marker "$s" end "\"rc\":$rc,\"seconds\":$(awk "BEGIN{printf \"%.2f\", $t1-$t0}")"
    dmesg > "$LAB_OUT/l1-dmesg.txt" 2>/dev/null
    lab_reset_bindings
done
say "done uptime=$(cut -d' ' -f1 /proc/uptime)"
