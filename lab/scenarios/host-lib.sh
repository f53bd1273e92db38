# Helpers for the host-* scenarios (not a scenario itself): where passvm-host is, and
# small JSON queries on its output. Sourced after lib.sh.

# host_binary: path of the host-reservation commands. $PASSVM_HOST wins; otherwise
# passvm-host from a build tree next to the checkout (newest first); otherwise $PASSVM,
# the full binary, which serves the same commands.
host_binary() {
    local c
    if [[ -n ${PASSVM_HOST:-} && -x $PASSVM_HOST ]]; then echo "$PASSVM_HOST"; return 0; fi
    for c in $(ls -t "$LAB_DIR"/../build*/src/host/passvm-host "$LAB_DIR"/../build*/host/passvm-host 2>/dev/null); do
        [[ -x $c ]] && { readlink -f "$c"; return 0; }
    done
    if [[ -n ${PASSVM:-} && -x $PASSVM ]]; then echo "$PASSVM"; return 0; fi
    command -v passvm-host
}

# json_get FILE PYEXPR: evaluates a Python expression over the parsed JSON `j`.
json_get() {
    /usr/bin/python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# list_entry FILE BDF FIELD: one field of one device in `list --json` output.
list_entry() {
    json_get "$1" "next((d['$3'] for d in j if d['address']=='$2'), 'missing')"
}

# check_verdict FILE NAME: verdict of one line of `check --json` output.
check_verdict() {
    json_get "$1" "next((l['verdict'] for l in j if l['name']=='$2'), 'missing')"
}

sysfs_group() { basename "$(readlink "/sys/bus/pci/devices/$1/iommu_group")"; }
