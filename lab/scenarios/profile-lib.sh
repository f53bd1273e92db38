# The tracing behind boot-profile and profile-ab: traced NAME -- CMD... runs run_l2 NAME with L1's KVM
# events (and, in an L1 of one CPU, its scheduler and timer events) recorded, then reports NAME.exits,
# NAME.exit-cost, NAME.cpu and NAME.guest (boot-profile.sh says what each holds). Not a scenario itself:
# those scenarios source it after lib.sh.

TRACE=/sys/kernel/tracing
EVENTS="kvm/kvm_pio kvm/kvm_mmio kvm/kvm_exit kvm/kvm_entry kvm/kvm_userspace_exit kvm/kvm_msr"
# Enabling sched_switch patches the scheduler's text; with several CPUs under L0's TCG one can meet the
# patch half done and hang L1 (run_l2.py's FirstEntryTrace), so only an L1 of one CPU traces it.
[[ $(nproc) == 1 ]] && EVENTS="$EVENTS sched/sched_switch timer/hrtimer_start timer/hrtimer_expire_entry"
# Every run finds L1's free memory written just before it, whatever ran before (lib.sh's run_l2, RUN_L2_WASH).
export RUN_L2_WASH=1
mountpoint -q $TRACE || mount -t tracefs nodev $TRACE

# traced NAME -- CMD...: run_l2 NAME with L1's kvm_pio/kvm_mmio events recorded, then result NAME.exits
# with the total and the busiest addresses.
traced() {
    local name=$1; shift 2
    echo 0 > $TRACE/tracing_on
    echo > $TRACE/trace
    echo 65536 > $TRACE/buffer_size_kb
    local ev
    for ev in $EVENTS; do echo 1 > $TRACE/events/$ev/enable; done
    echo 1 > $TRACE/tracing_on
    RUN_L2_TRACE_MARK=1 run_l2 "$name" --timeout 480 -- "$@"
    echo 0 > $TRACE/tracing_on
    for ev in $EVENTS; do echo 0 > $TRACE/events/$ev/enable; done
    local lost
    lost=$(awk '/^overrun:/ {s += $2} END {print s + 0}' $TRACE/per_cpu/cpu*/stats)
    local exe; exe=$(basename "$1"); exe=${exe:0:15}  # the VMM's first thread name (the kernel's comm)
    /usr/bin/python3 - "$name" "$lost" "$TRACE/trace" "$LAB_SCENARIO" "$LAB_OUT/$name.summary.json" "$exe" <<'PY'
import collections, json, re, sys
name, lost, path, scenario, summary, exe = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
count = collections.Counter()
for line in open(path, errors="replace"):
    m = re.search(r"kvm_pio: pio_(read|write) at (0x[0-9a-f]+)", line)
    if m:
        count[f"port {m.group(2)} {m.group(1)}"] += 1
        continue
    m = re.search(r"kvm_mmio: mmio (read|write) len \d+ gpa (0x[0-9a-f]+)", line)
    if m and m.group(1) in ("read", "write"):
        count[f"mmio {m.group(2)} {m.group(1)}"] += 1
top = ", ".join(f"{k} {v}" for k, v in count.most_common(8))
print("LABRESULT " + json.dumps({"scenario": scenario, "check": f"{name}.exits", "pass": lost == 0,
      "figures": {"exits": sum(count.values()), "busiest": top, "lost_events": lost},
      "detail": "" if lost == 0 else f"{lost} trace events lost: the counts are low"}, separators=(",", ":")), flush=True)
# Per thread: kvm_exit, [kvm_userspace_exit], kvm_entry. The time from an exit to the next entry is L1's
# (KVM, and the VMM when it was handed the exit); from an entry to the next exit, the guest's.
EVENT = re.compile(r"^\s*.+?-(\d+)\s+\[\d+\]\s+\S+\s+([\d.]+): (kvm_exit|kvm_entry|kvm_userspace_exit):(.*)")
state = {}
l1 = {"user": [0, 0.0], "kernel": [0, 0.0]}
guest = 0.0
by_reason = collections.Counter()
for line in open(path, errors="replace"):
    m = EVENT.match(line)
    if not m:
        continue
    tid, ts, ev, rest = m.group(1), float(m.group(2)), m.group(3), m.group(4)
    st = state.setdefault(tid, {"exit": None, "entry": None, "user": False, "reason": ""})
    if ev == "kvm_exit":
        if st["entry"] is not None:
            guest += ts - st["entry"]
        r = re.search(r"reason (\S+)", rest)
        st.update(exit=ts, entry=None, user=False, reason=r.group(1) if r else "?")
    elif ev == "kvm_userspace_exit":
        st["user"] = True
    elif st["exit"] is not None:
        kind = "user" if st["user"] else "kernel"
        l1[kind][0] += 1
        l1[kind][1] += ts - st["exit"]
        by_reason[f"{st['reason']} ({'to the VMM' if st['user'] else 'in KVM'})"] += ts - st["exit"]
        st.update(exit=None, entry=ts)
    else:
        st["entry"] = ts
fig = {"guest_s": round(guest, 2)}
for kind, (n, t) in l1.items():
    fig[f"{kind}_exits"] = n
    fig[f"{kind}_s"] = round(t, 2)
    fig[f"{kind}_us_each"] = round(t / n * 1e6) if n else 0
fig["l1_busiest"] = ", ".join(f"{k} {v:.2f} s" for k, v in by_reason.most_common(5))
print("LABRESULT " + json.dumps({"scenario": scenario, "check": f"{name}.exit-cost", "pass": lost == 0 and bool(l1["user"][0] + l1["kernel"][0]),
      "figures": fig, "detail": "" if lost == 0 else f"{lost} trace events lost: the times are low"}, separators=(",", ":")), flush=True)
# Who had L1's CPU from the VMM's start (its exec: the first switch to a thread named after it) to L2's
# init (run_l2's figure): anything but the VMM there (the lab's Python sampling and reading the console
# above all) lengthens that VMM's figure, and it must weigh the same on both VMMs.
SWITCH = re.compile(r"^\s*.+?-\d+\s+\[\d+\]\s+\S+\s+([\d.]+): sched_switch: prev_comm=(.+?) prev_pid=\d+ .*"
                    r"next_comm=(.+?) next_pid=\d+")
switches = [(float(m.group(1)), m.group(2), m.group(3)) for m in map(SWITCH.match, open(path, errors="replace")) if m]
try:
    init_ms = json.load(open(summary))["vmm"]["vmm_start_to_l2_init_ms"]
except (OSError, ValueError, KeyError, TypeError):
    init_ms = None
# passvm names its threads pv-* and vcpuN; QEMU's vCPU threads are "CPU N/KVM".
VMM = re.compile(r"(" + re.escape(exe) + r"|qemu|pv-|vcpu|CPU \d+/KVM)")
VCPU = re.compile(r"(vcpu\d|CPU \d+/KVM)")
starts = [t for t, prev, nxt in switches if VMM.match(nxt)]
if switches and starts and init_ms:
    begin, end = starts[0], starts[0] + init_ms / 1000

    def shares(begin, end):
        share, last = collections.Counter(), None
        for t, prev, nxt in switches:
            if last is not None and t > begin:
                who = "vmm" if VMM.match(prev) else "lab_python" if prev.startswith("python") else \
                      "idle" if prev.startswith("swapper") else "other"
                took = max(0.0, min(t, end) - max(last, begin))
                share[who] += took
                if who == "vmm":  # the VMM's share split: its vCPUs (the guest and its exits) and the rest
                    share["vmm_vcpus" if VCPU.match(prev) else "vmm_guest_ram" if prev.startswith("pv-ram") else
                          "vmm_other"] += took
            if t >= end:
                break
            last = t
        return share

    share, span = shares(begin, end), end - begin
    cpu = {f"{k}_s": round(share[k], 2)
           for k in ("vmm", "vmm_vcpus", "vmm_guest_ram", "vmm_other", "lab_python", "idle", "other")}
    cpu.update({f"{k}_pct": round(100 * share[k] / span) for k in ("vmm", "lab_python", "idle", "other")})
    # The VMM's own start, up to the guest's first instruction (its first kvm_entry): who had the CPU then.
    entry = next((float(m.group(2)) for m in map(EVENT.match, open(path, errors="replace"))
                  if m and m.group(3) == "kvm_entry" and float(m.group(2)) >= begin), None)
    if entry is not None:
        early = shares(begin, entry)
        cpu["to_first_entry_s"] = round(entry - begin, 3)
        cpu.update({f"to_first_entry_{k}_s": round(early[k], 3) for k in ("vmm", "lab_python", "idle", "other")})
    # L1 idle means both of L2's vCPUs wait: for a timer of L2's (its deadline, emulated by an hrtimer of
    # L1's KVM) or an interrupt. An hrtimer that fires long after it was due while L1 sat idle is L1's
    # timer interrupt arriving late from L0, not a wait of the guest's: the spells and the lateness say which.
    spells, idle_from = [], None
    for t, prev, nxt in switches:
        if nxt.startswith("swapper") and begin <= t < end:
            idle_from = t
        elif prev.startswith("swapper") and idle_from is not None:
            spells.append(t - idle_from)
            idle_from = None
    due, late = {}, []
    for line in open(path, errors="replace"):
        m = re.search(r"\s([\d.]+): hrtimer_start: hrtimer=(\w+) .*expires=(\d+)", line)
        if m:
            due[m.group(2)] = int(m.group(3))
            continue
        m = re.search(r"\s([\d.]+): hrtimer_expire_entry: hrtimer=(\w+) .*now=(\d+)", line)
        if m and begin <= float(m.group(1)) < end and m.group(2) in due:
            late.append((int(m.group(3)) - due.pop(m.group(2))) / 1e6)
    cpu.update(idle_spells_over_10ms=sum(s > 0.01 for s in spells),
               idle_in_them_s=round(sum(s for s in spells if s > 0.01), 2),
               longest_idle_ms=round(max(spells, default=0) * 1000),
               timers_fired=len(late), timers_late_over_5ms=sum(x > 5 for x in late),
               latest_timer_ms=round(max(late, default=0), 1))
    print("LABRESULT " + json.dumps({"scenario": scenario, "check": f"{name}.cpu", "pass": lost == 0,
          "figures": dict(window_s=round(span, 2), **cpu), "detail": ""}, separators=(",", ":")), flush=True)
elif switches:
    print("LABRESULT " + json.dumps({"scenario": scenario, "check": f"{name}.cpu", "pass": False, "figures": {},
          "detail": "no VMM thread in the scheduler trace, or no time to init"}, separators=(",", ":")), flush=True)
PY
    # L1's symbols name L2's only when both run the same kernel without KASLR (l2_append says nokaslr).
    local syms=()
    [[ $L2_KERNEL == *"$(uname -r)"* ]] && grep -qw nokaslr /proc/cmdline && syms=(/proc/kallsyms)
    /usr/bin/python3 "$LAB_DIR/scenarios/guest_profile.py" "$name" "$TRACE/trace" "$LAB_SCENARIO" \
        "$LAB_OUT/$name.summary.json" "${syms[@]}"
}

