#!/usr/bin/python3
"""Where an L2 guest's vCPUs were, read from L1's ftrace of its kvm events (boot-profile's traced).

guest_profile.py NAME TRACE SCENARIO SUMMARY [KALLSYMS]

The trace holds a trace_marker line "lab: NAME starts" that run_l2 wrote as it started the VMM, and
SUMMARY (run_l2's NAME.summary.json) the time from then to L2's init: the samples below are those up to
init. Prints one LABRESULT, NAME.guest, with:
- vmm_start_to_first_entry_ms: from the VMM's start to the guest's first instruction (its first
  kvm_entry).
- first_entry_to_kvmclock_ms: from there to the first write of the kvm-clock MSR from the kernel's
  address space, when the guest kernel's clock starts (SeaBIOS writes that MSR too, earlier). Under
  passvm that is the kernel's own early boot; under QEMU it includes the firmware and the kernel's
  decompressor.
- per vCPU, where the guest was each time L1 took an interrupt while running it (kvm_exit reason
  interrupt: L1's timer, mostly, so a sample at random), by kernel symbol when KALLSYMS (L1's
  /proc/kallsyms) names them: only when L1 and L2 run the same kernel, both without KASLR.
- waiting_pct: of the samples in the kernel (not firmware, not user space), the share in which a vCPU
  spun for the other one (a lock it held, a function call or a stop_machine it had to answer). In an
  L1 with fewer CPUs than L2 has vCPUs, the other vCPU is often not running, whatever the VMM.
"""
import bisect
import collections
import json
import re
import sys

# Loops that wait for another CPU to let go of a lock, answer an IPI or join a stop_machine.
WAITING = {
    "__pv_queued_spin_lock_slowpath", "native_queued_spin_lock_slowpath", "queued_read_lock_slowpath",
    "queued_write_lock_slowpath", "smp_call_function_many_cond", "smp_call_function_single",
    "stop_machine_yield", "multi_cpu_stop", "__timer_delete_sync", "kvm_wait",
}
KVMCLOCK_MSRS = ("4b564d01", "4b564d00")
BELOW_KERNEL = "(below the kernel: firmware, boot code or user space)"


def load_symbols(path):
    syms = []
    try:
        for line in open(path):
            parts = line.split()
            if len(parts) == 3 and parts[1] in "tTwW":  # core kernel text only (modules have a 4th column)
                syms.append((int(parts[0], 16), parts[2]))
    except (OSError, ValueError):
        return [], []
    syms.sort()
    return [a for a, _ in syms], [n for _, n in syms]


def main():
    name, trace, scenario, summary = sys.argv[1:5]
    addrs, names = load_symbols(sys.argv[5]) if len(sys.argv) > 5 else ([], [])
    try:
        init_s = json.load(open(summary))["vmm"]["vmm_start_to_l2_init_ms"] / 1000
    except (OSError, ValueError, KeyError, TypeError):
        init_s = None

    def symbol(rip):
        if rip < 0x800000000000:
            return BELOW_KERNEL
        i = bisect.bisect_right(addrs, rip) - 1
        return names[i] if i >= 0 else "(kernel)"

    event = re.compile(r"^\s*.+?-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): (kvm_exit|kvm_entry|kvm_msr|tracing_mark_write): (.*)")
    start = first_entry = None
    clock = None
    last_rip = {}  # thread -> guest RIP of its last exit
    samples = collections.defaultdict(collections.Counter)
    for line in open(trace, errors="replace"):
        m = event.match(line)
        if not m:
            continue
        tid, ts, ev, rest = m.group(1), float(m.group(2)), m.group(3), m.group(4)
        if ev == "tracing_mark_write":
            if rest.strip() == f"lab: {name} starts":
                start = ts
            continue
        if start is not None and init_s is not None and ts > start + init_s:
            break
        if ev == "kvm_entry":
            if first_entry is None:
                first_entry = ts
        elif ev == "kvm_msr":
            if clock is None and rest.startswith("msr_write") and rest.split()[1] in KVMCLOCK_MSRS \
                    and last_rip.get(tid, 0) >= 0xffff800000000000:
                clock = ts
        else:
            e = re.match(r"vcpu (\d+) reason (\S+) rip (0x[0-9a-f]+)", rest)
            if e:
                last_rip[tid] = int(e.group(3), 16)
            if e and e.group(2) == "interrupt":
                samples[int(e.group(1))][symbol(int(e.group(3), 16)) if addrs else "(no symbols)"] += 1
    fig = {"vmm_start_to_first_entry_ms": round((first_entry - start) * 1000) if start and first_entry else None}
    fig["first_entry_to_kvmclock_ms"] = round((clock - first_entry) * 1000) if clock and first_entry else None
    total = sum(sum(c.values()) for c in samples.values())
    waiting = sum(n for c in samples.values() for s, n in c.items() if s in WAITING)
    in_kernel = sum(n for c in samples.values() for s, n in c.items() if s != BELOW_KERNEL)
    fig["samples"] = total
    if addrs:
        fig["kernel_samples"] = in_kernel
        fig["waiting_pct"] = round(100 * waiting / in_kernel) if in_kernel else None  # of the kernel's time
        for vcpu, c in sorted(samples.items()):
            n = sum(c.values())
            fig[f"vcpu{vcpu}_top"] = ", ".join(f"{s} {100 * k / n:.0f}%" for s, k in c.most_common(6))
    ok = None not in (start, init_s, first_entry, clock) and total > 0
    print("LABRESULT " + json.dumps({"scenario": scenario, "check": f"{name}.guest", "pass": ok, "figures": fig,
          "detail": "" if ok else "no start marker, time to init, first entry, kernel kvm-clock write or interrupt exit"},
          separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
