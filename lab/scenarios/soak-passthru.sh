# The passthrough soak (soak-lib.sh): 15 boots under each VMM, 30 in all, about 25 minutes.
# Not in the suite (soak-passthru-short is); run it with: lab/run --passvm BUILD/src/cli/passvm soak-passthru
# lab-expect: soak.passvm soak.qemu
# lab-timeout: 3600

source "$LAB_DIR/scenarios/soak-lib.sh"
soak_passthru 15
