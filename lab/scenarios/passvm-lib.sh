# Helpers for the passvm acceptance scenarios (passvm-intx, passvm-devices, passvm-teardown).
# Not a scenario itself: those scenarios source it after lib.sh.
#
# passvm's own counters are the evidence that the data path stays out of passvm (trapped BAR
# accesses, exits), so these helpers take counter snapshots around one L2 check and read them
# back from the console file run_l2 keeps.

pv_need_binary() {  # pv_need_binary CHECK: fail CHECK unless --passvm gave a binary
    if [[ -z $PASSVM || ! -x $PASSVM ]]; then
        result "$1" fail detail="no passvm binary: run lab/run --passvm BUILD/src/cli/passvm"
        exit 1
    fi
}

# pv_tap CHECK -- CMD...: runs CMD (passvm) and forwards its output. When L2 announces the start
# and the end of CHECK ("L2MARK start CHECK" / "L2MARK end CHECK"), prints "PVTAP before|after CHECK"
# and sends SIGUSR2, so passvm prints its counters right after that line.
pv_tap() {
    /usr/bin/python3 - "$@" <<'PY'
import os, signal, subprocess, sys
check, cmd = sys.argv[1], sys.argv[3:]
p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
signal.signal(signal.SIGTERM, lambda *_: p.terminate())
marks = {f"L2MARK start {check}": "before", f"L2MARK end {check}": "after"}
for raw in p.stdout:
    line = raw.decode("utf-8", "replace")
    sys.stdout.write(line)
    for mark, label in marks.items():
        if mark in line:
            sys.stdout.write(f"PVTAP {label} {check}\n")
            p.send_signal(signal.SIGUSR2)
    sys.stdout.flush()
sys.exit(p.wait())
PY
}

# The same as a command line for run_l2, which runs programs, not shell functions:
#   run_l2 NAME -- "${PV_TAP[@]}" CHECK -- "$PASSVM" ...
PV_TAP=(/bin/bash -c 'source "$0"; pv_tap "$@"' "$LAB_DIR/scenarios/passvm-lib.sh")

# pv_counters CONSOLE BDF: JSON {"before": {...}, "after": {...}, "exit": {...}} of the counters of one
# passthrough device and the vCPUs' exits, from the snapshots pv_tap asked for and the --stats report.
pv_counters() {
    /usr/bin/python3 - "$1" "$2" <<'PY'
import json, re, sys
path, bdf = sys.argv[1], sys.argv[2]
snaps, label, cur = {}, "start", None
try:
    lines = open(path, errors="replace").read().splitlines()
except OSError:
    lines = []
for line in lines:
    text = line[9:] if len(line) > 9 and line[:8].strip().isdigit() else line
    m = re.match(r"PVTAP (before|after) ", text)
    if m:
        label = m.group(1)
        continue
    if re.match(r"passvm: \S+ counters$", text):
        # Snapshots come in order: before, after, then the one --stats prints at exit.
        label = label if label not in snaps else "exit"
        cur = snaps.setdefault(label, {"vcpu_mmio_exits": 0, "vcpu_io_exits": 0})
        continue
    if cur is None:
        continue
    m = re.match(r"\s+vcpu\d+: io exits (\d+), mmio exits (\d+), other exits (\d+)", text)
    if m:
        cur["vcpu_io_exits"] += int(m.group(1))
        cur["vcpu_mmio_exits"] += int(m.group(2))
        continue
    if bdf in text and "trapped mmio" in text:
        for b, other, msix in re.findall(r"bar(\d)=(\d+)\+(\d+)", text):
            cur[f"bar{b}_other"], cur[f"bar{b}_msix"] = int(other), int(msix)
        m = re.search(r"pio=(\d+)", text)
        if m:
            cur["pio"] = int(m.group(1))
        m = re.search(r"intx=(\w+)", text)
        if m:
            cur["intx"] = m.group(1)
        cur = None
print(json.dumps(snaps))
PY
}

# pv_trap_result CHECK CONSOLE BDF: one result with the device's trapped BAR0 accesses and the vCPUs'
# MMIO exits during the tapped L2 check (after - before) and over the whole run. It fails when the
# check's data path trapped an ordinary BAR0 register, or when the snapshots are missing.
pv_trap_result() {
    local check=$1 console=$2 bdf=$3 json
    json=$(pv_counters "$console" "$bdf")
    /usr/bin/python3 - "$check" "$json" <<'PY'
import json, os, sys
check, snaps = sys.argv[1], json.loads(sys.argv[2])
b, a, e = snaps.get("before"), snaps.get("after"), snaps.get("exit")
fig, detail = {}, ""
if not b or not a or "bar0_other" not in b or "bar0_other" not in a:
    detail = f"no counter snapshots around the check (found: {sorted(snaps)}): passvm did not answer SIGUSR2"
else:
    for k in ("bar0_other", "bar0_msix", "vcpu_mmio_exits", "vcpu_io_exits", "pio"):
        if k in a and k in b:
            fig[f"{k}_during"] = a[k] - b[k]
    for k in ("bar0_other", "bar0_msix", "vcpu_mmio_exits"):
        if e and k in e:
            fig[f"{k}_whole_run"] = e[k]
    fig["intx"] = a.get("intx", "?")
    if fig["bar0_other_during"] != 0:
        detail = f"{fig['bar0_other_during']} ordinary BAR0 accesses trapped during the transfer: the data path exits to passvm"
print("LABRESULT " + json.dumps({"scenario": os.environ.get("LAB_SCENARIO", "?"), "check": check,
      "pass": not detail, "figures": fig, "detail": detail}, separators=(",", ":")), flush=True)
PY
}

# pv_irq_mode CHECK RUN DRIVER MODE: passes when L2's irqs check in run RUN saw the device driven by DRIVER
# in interrupt mode MODE (msix, msi, intx) with interrupts counted.
pv_irq_mode() {
    /usr/bin/python3 - "$1" "$LAB_OUT/$2.summary.json" "$3" "$4" <<'PY'
import json, os, sys
check, path, driver, mode = sys.argv[1:5]
fig, detail = {}, ""
try:
    devs = json.load(open(path))["checks"]["irqs"]["devices"]
except (OSError, ValueError, KeyError, TypeError):
    devs, detail = None, f"no irqs figures in {path}: the run did not reach the irqs check"
if devs is not None:
    mine = {b: d for b, d in devs.items() if d.get("driver") == driver}
    if not mine:
        detail = f"no device driven by {driver} in L2"
    for b, d in mine.items():
        fig["bdf"], fig["mode"], fig["count"] = b, d.get("mode"), d.get("count", 0)
        if d.get("mode") != mode:
            detail = f"{b} ({driver}) got interrupt mode {d.get('mode')}, expected {mode}"
        elif not d.get("count"):
            detail = f"{b} ({driver}) in {mode} mode received no interrupts"
print("LABRESULT " + json.dumps({"scenario": os.environ.get("LAB_SCENARIO", "?"), "check": check,
      "pass": not detail, "figures": fig, "detail": detail}, separators=(",", ":")), flush=True)
PY
}

# pv_steps CHECK RUN: one result CHECK with passvm's own start-up step times (-v) from the console of
# run_l2 RUN: for each step, when its line appeared (ms after passvm started, from the console's
# timestamps) and how long passvm says the step took. It fails when a step's line is missing.
pv_steps() {
    /usr/bin/python3 - "$1" "$LAB_OUT/$2.console" <<'PY'
import json, os, re, sys
check, path = sys.argv[1:3]
steps = {"kernel": r"(unpacked )?kernel (unpacked|loaded)", "ram_allocated": r"guest RAM allocated",
         "ram_dma_mapped": r"guest RAM mapped for DMA", "setup": r"\d+ vCPUs; setup took"}
fig, missing = {}, []
try:
    lines = open(path, errors="replace").read().splitlines()
except OSError:
    lines = []
for key, pattern in steps.items():
    for line in lines:
        # Allocation runs beside the DMA mapping, so passvm gives its time in a note, not a step of its own.
        # Both notes come while the guest runs: one can follow a console line's first part on its line.
        m = re.match(r"\s*(\d+) (?:.*?)passvm:\s+guest RAM allocated in ([\d.]+) ms \((\d+) threads\)", line)
        if m and key == "ram_allocated":
            fig["ram_allocated_at_ms"], fig["ram_allocated_step_ms"] = int(m.group(1)), float(m.group(2))
            fig["ram_threads"] = int(m.group(3))
            break
        # The mapping runs beside the guest's start (passthru/dma_ready.h): a note, with its time in it.
        m = re.match(r"\s*(\d+) (?:.*?)passvm:\s+guest RAM mapped for DMA \(\d+ MiB pinned in ([\d.]+) ms", line)
        if m and key == "ram_dma_mapped":
            fig["ram_dma_mapped_at_ms"], fig["ram_pin_ms"] = int(m.group(1)), float(m.group(2))
            break
        m = re.match(r"\s*(\d+) passvm:\s+([\d.]+) ms  (.*)", line)
        if m and re.match(pattern, m.group(3)):
            fig[f"{key}_at_ms"], fig[f"{key}_step_ms"] = int(m.group(1)), float(m.group(2))
            t = re.search(r"allocated \((\d+) threads\)", m.group(3))
            if t:
                fig["ram_threads"] = int(t.group(1))
            t = re.search(r"pinned in ([\d.]+) ms", m.group(3))
            if t:
                fig["ram_pin_ms"] = float(t.group(1))
            t = re.search(r"setup took ([\d.]+) ms", m.group(3))
            if t:
                fig["setup_total_ms"] = float(t.group(1))
            break
    else:
        missing.append(key)
detail = f"no -v line for {', '.join(missing)} in {path}" if missing else ""
print("LABRESULT " + json.dumps({"scenario": os.environ.get("LAB_SCENARIO", "?"), "check": check,
      "pass": not missing, "figures": fig, "detail": detail}, separators=(",", ":")), flush=True)
PY
}
