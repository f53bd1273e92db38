# The passthrough soak (soak-lib.sh) shortened for the suite: 2 boots under each VMM.
# lab-expect: soak.passvm soak.qemu
# lab-timeout: 900

source "$LAB_DIR/scenarios/soak-lib.sh"
soak_passthru 2
