# Where two passvm binaries' boots differ: $PASSVM (A) and $PASSVM_B (B, lab/run --env PASSVM_B=PATH)
# boot the same L2 alternately, A B B A ... (AB_ROUNDS pairs, default 2), kernel cached, each boot traced
# as boot-profile traces passvm's (profile-lib.sh: NAME.exits, NAME.exit-cost, NAME.cpu, NAME.guest).
# AB_PT=1 passes the NVMe through and has L2 check it, as boot-ab does. For a difference boot-ab shows
# and cannot explain: the traced boots say whether the guest took more exits, spun more for its other
# vCPU, or waited for L1's CPU, and who had it (NAME.cpu: in an L1 of one CPU only). The tracing slows
# every boot: compare boots within a run.
# Not in the suite.
# lab-expect: ab-a1.vmm ab-a1.guest ab-b1.vmm ab-b1.guest
# lab-timeout: 2400

if [[ -z $PASSVM || ! -x $PASSVM || -z ${PASSVM_B:-} || ! -x $PASSVM_B ]]; then
    result ab-a1.vmm fail detail="give both binaries: lab/run --passvm A --env PASSVM_B=B profile-ab"
    exit 1
fi
source "$LAB_DIR/scenarios/profile-lib.sh"
ROUNDS=${AB_ROUNDS:-2}
EXTRA=()
ab_boot ab-a1.vmm || exit 1
pv() {  # pv BINARY NAME [traced]
    local run=(run_l2 "$2" --timeout 480 --)
    [[ ${3:-} == traced ]] && run=(traced "$2" --)
    "${run[@]}" "$1" -c 2 -m 512M -s 0,hostbridge -l com1,stdio --stats -v --kernel "$L2_KERNEL" \
        --initrd "$L2_INITRD" "${EXTRA[@]}" --append "$BOOT" ab
}
export PASSVM_CACHE_DIR=$(mktemp -d /tmp/passvm-ab-cache.XXXXXX)
pv "$PASSVM" ab-warm  # fill the kernel cache for both binaries; not counted
pv "$PASSVM_B" ab-warm-b
for ((i = 1; i <= ROUNDS; i++)); do
    if ((i % 2)); then order=(a b); else order=(b a); fi
    for w in "${order[@]}"; do
        if [[ $w == a ]]; then pv "$PASSVM" "ab-a$i" traced; else pv "$PASSVM_B" "ab-b$i" traced; fi
    done
done
rm -rf "$PASSVM_CACHE_DIR"
