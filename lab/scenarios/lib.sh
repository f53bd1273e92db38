# Helpers sourced by every lab scenario (bash, inside L1's chroot).
# Scenarios describe what to pass through and which checks L2 must run; the mechanics
# of binding devices, running a VMM with a time limit, measuring it and reporting
# results in the one format lab/run understands live here, so every VMM (QEMU as the
# reference, passvm) is measured the same way.
#
# Environment set by stage2.sh: LAB_DIR, LAB_SCENARIO, LAB_OUT (per-scenario output dir),
# PASSVM, L2_KERNEL, L2_INITRD, LAB_L1_LINKLOCAL.

LAB_BDFS="0000:00:03.0 0000:00:04.0 0000:00:05.0 0000:00:06.0 0000:00:07.0"

_json_str() {  # JSON string literal of $1
    local s=$1
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\t'/ }; s=${s//$'\r'/}
    printf '"%s"' "$s"
}

# result CHECK pass|fail [detail=TEXT] [KEY=VALUE...]: one LABRESULT line on L1's console.
# Numbers stay numbers in "figures"; anything else becomes a string.
result() {
    local check=$1 verdict=$2 detail="" figs="" kv k v
    shift 2
    [[ $verdict == pass || $verdict == fail ]] || { echo "result: verdict must be pass or fail, got '$verdict'" >&2; verdict=fail; }
    for kv in "$@"; do
        k=${kv%%=*}; v=${kv#*=}
        if [[ $k == detail ]]; then detail=$v; continue; fi
        [[ $v =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || v=$(_json_str "$v")
        figs+="${figs:+,}$(_json_str "$k"):$v"
    done
    local pass=false; [[ $verdict == pass ]] && pass=true
    echo "LABRESULT {\"scenario\":$(_json_str "${LAB_SCENARIO:-?}"),\"check\":$(_json_str "$check"),\"pass\":$pass,\"figures\":{$figs},\"detail\":$(_json_str "$detail")}"
}

bdf_driver() {  # current driver of a PCI device, or empty
    local l=/sys/bus/pci/devices/$1/driver
    [[ -e $l ]] && basename "$(readlink "$l")"
}

# bind_vfio BDF: hand a device to vfio-pci the way an administrator would.
bind_vfio() {
    local bdf=$1 dev=/sys/bus/pci/devices/$1
    [[ -d $dev ]] || { echo "bind_vfio: no PCI device $bdf in L1 (see lab/README.md for the layout)" >&2; return 1; }
    [[ $(bdf_driver "$bdf") == vfio-pci ]] && return 0
    echo vfio-pci > "$dev/driver_override"
    [[ -e $dev/driver ]] && echo "$bdf" > "$dev/driver/unbind"
    echo "$bdf" > /sys/bus/pci/drivers_probe
    [[ $(bdf_driver "$bdf") == vfio-pci ]] || { echo "bind_vfio: $bdf did not bind to vfio-pci (driver: $(bdf_driver "$bdf"))" >&2; return 1; }
    echo "bind_vfio: $bdf on vfio-pci, group $(basename "$(readlink "$dev/iommu_group")")"
}

# unbind_vfio BDF: give a device back to its host driver.
unbind_vfio() {
    local bdf=$1 dev=/sys/bus/pci/devices/$1
    [[ -d $dev ]] || return 1
    echo > "$dev/driver_override"
    [[ $(bdf_driver "$bdf") == vfio-pci ]] && echo "$bdf" > /sys/bus/pci/drivers/vfio-pci/unbind
    echo "$bdf" > /sys/bus/pci/drivers_probe 2>/dev/null
    return 0
}

# Between scenarios: every lab device back on its host driver.
lab_reset_bindings() {
    local bdf
    for bdf in $LAB_BDFS; do
        [[ $(bdf_driver "$bdf") == vfio-pci || -n $(cat "/sys/bus/pci/devices/$bdf/driver_override" 2>/dev/null | grep -v '(null)') ]] \
            && unbind_vfio "$bdf"
    done
    return 0
}

# run_l2 NAME [--timeout S] -- CMD...: run a VMM that boots the L2 guest, with a time
# limit; collects L2RESULT lines and reports them as checks NAME.<check>, plus NAME.vmm
# with wall time, VMM-start-to-L2-init time and peak RSS. Returns 0 if everything passed.
# With RUN_L2_WASH=1 (the benchmarks set it), L1's free memory is written just before the VMM starts
# (lab/l1/prefault.py says why): memory the previous L2 ran from is several times slower to write for
# the next process that gets it (a cached kernel load: about 300-400 ms against 40-55 ms), which made a run's
# figures depend on the run before it. It runs here, not in run_l2.py, so that its memory is not
# counted in the VMM's peak.
run_l2() {
    if [[ ${RUN_L2_WASH:-} == 1 ]]; then
        echo "[$1] L1's free memory written before the run: $(/usr/bin/python3 "$LAB_DIR/l1/prefault.py" 2>&1)"
    fi
    /usr/bin/python3 "$LAB_DIR/scenarios/run_l2.py" "$@"
}

# l2_compare NAME BASE OTHER: one result NAME with OTHER/BASE ratios of the figures both
# run_l2 runs measured (VMM start to L2 init, wall time, peak RSS, nvme time...). It
# passes when both runs passed; the ratios are for people and trend tracking.
l2_compare() {
    /usr/bin/python3 - "$1" "$LAB_OUT/$2.summary.json" "$LAB_OUT/$3.summary.json" "$2" "$3" <<'PY'
import json, sys
name, base_path, other_path, base, other = sys.argv[1:6]
def load(p):
    try:
        return json.load(open(p))
    except (OSError, ValueError):
        return None
b, o = load(base_path), load(other_path)
fig, detail = {}, ""
if b is None or o is None:
    detail = f"no summary from {base if b is None else other}: that VMM run did not happen"
else:
    pairs = {"start_to_init": ("vmm", "vmm_start_to_l2_init_ms"), "wall": ("vmm", "wall_ms"),
             "peak_rss": ("vmm", "peak_rss_kb"), "private_rss": ("vmm", "peak_private_rss_kb"),
             "rss_minus_guest": ("vmm", "peak_rss_minus_guest_kb"), "l2_boot": ("boot", "uptime_s"),
             "nvme": ("nvme", "total_ms"), "nvme_write": ("nvme", "write_ms"), "nvme_read": ("nvme", "read_ms"),
             "edu_dma": ("edu", "dma_round_trip_ms"), "ping_rtt": ("ping", "avg_rtt_ms")}
    for key, (section, field) in pairs.items():
        get = lambda s: (s["vmm"] if section == "vmm" else s["checks"].get(section, {})).get(field)
        bv, ov = get(b), get(o)
        if isinstance(bv, (int, float)) and isinstance(ov, (int, float)) and bv > 0:
            fig[f"{key}_{base}"], fig[f"{key}_{other}"] = bv, ov
            fig[f"{key}_ratio"] = round(ov / bv, 3)
    if not (b["pass"] and o["pass"]):
        detail = f"{base} passed: {b['pass']}, {other} passed: {o['pass']}; ratios are only meaningful when both pass"
print("LABRESULT " + json.dumps({"scenario": __import__("os").environ.get("LAB_SCENARIO", "?"), "check": name,
      "pass": not detail, "figures": fig, "detail": detail}, separators=(",", ":")), flush=True)
PY
}

# l2_append CHECKS [EXTRA...]: the L2 kernel command line for a list of checks; its console is ttyS0, or
# $L2_CONSOLE (hvc0: the virtio console).
# pci=noearly: L1's qemu64 CPU is an AMD family 0xf, which makes Linux look for an AGP/GART
# aperture by reading the config space of every slot on 256 buses through 0xcf8/0xcfc before
# the PCI subsystem exists: 16000 exits, about 3 s of every L2 boot under either VMM here.
l2_append() {
    local checks=$1; shift
    echo "console=${L2_CONSOLE:-ttyS0} panic=-1 nokaslr pci=noearly lab.checks=$checks lab.peer=$LAB_L1_LINKLOCAL $*"
}

# ab_boot CHECK: BOOT (L2's command line) and EXTRA (passvm's arguments) for boot-ab and profile-ab's
# boots, EXTRA extended: with AB_PT=1 the NVMe is bound to vfio-pci and passed through, and L2 checks it;
# AB_APPEND adds to the command line. A failed binding is result CHECK, failed.
ab_boot() {
    if [[ ${AB_PT:-} == 1 ]]; then
        bind_vfio 0000:00:03.0 || { result "$1" fail detail="cannot bind the NVMe to vfio-pci"; return 1; }
        BOOT="$(l2_append cpus,nvme,nvmebig,nvmerand ${AB_APPEND:-})"
        EXTRA+=(-s 3,passthru,0000:00:03.0)
    else
        BOOT="$(l2_append cpus ${AB_APPEND:-})"
    fi
}

# msix_host_check CHECK RUN: the VMM of run_l2 RUN gave each passed-through device only the MSI-X vectors
# L2's drivers use: L1's /proc/interrupts (peak over the run) against L2's requested vectors for the
# device with the same vendor:device, next to the table size the device offers.
msix_host_check() {
    /usr/bin/python3 - "$1" "$LAB_OUT/$2.summary.json" <<'PY'
import json, os, sys
name, path = sys.argv[1:3]
fig, bad = {}, []
try:
    summary = json.load(open(path))
except (OSError, ValueError):
    summary = None
if summary is None:
    bad.append(f"no summary at {path}: the VMM run did not happen")
else:
    guest = {d.get("id"): d for d in summary["checks"].get("irqs", {}).get("devices", {}).values()}
    devices = summary["vmm"].get("l1_msix", {})
    if not devices:
        bad.append("no passed-through device with MSI-X")
    for bdf, d in devices.items():
        used = guest.get(d["id"], {}).get("requested")
        key = bdf[5:].replace(":", "_")
        fig[f"{key}_table"], fig[f"{key}_host"], fig[f"{key}_l2_requested"] = d["table"], d["host_vectors"], used
        if used is None:
            bad.append(f"{bdf} ({d['id']}): L2 reported no interrupts for it")
        elif d["host_vectors"] < 1 or d["host_vectors"] > used:
            bad.append(f"{bdf} ({d['id']}): L1 gave it {d['host_vectors']} MSI-X vectors for the {used} L2 uses "
                       f"(table of {d['table']})")
print("LABRESULT " + json.dumps({"scenario": os.environ.get("LAB_SCENARIO", "?"), "check": name,
      "pass": not bad, "figures": fig, "detail": "; ".join(bad)}, separators=(",", ":")), flush=True)
PY
}
