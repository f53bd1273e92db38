# The vCPU unit tests need a KVM that runs guests, which the build machines lack: they skip there.
# L1 has nested KVM, so kvm_test runs here for real: long mode, port I/O and MMIO exits, interrupts,
# kicks, pause and resume of a spinning guest. Every test must run (none skipped) and pass.
# lab-expect: kvm.unit
# lab-timeout: 300

# The test binary sits in the build tree of the passvm under test (BUILD/src/cli/passvm), or in the
# checkout's build/ when --passvm names a copy elsewhere.
bin=""
for dir in "$(dirname "$(dirname "$(dirname "${PASSVM:-/nonexistent/x/y/z}")")")" "$LAB_DIR/../build"; do
    [[ -x $dir/src/kvm/kvm_test ]] && { bin=$dir/src/kvm/kvm_test; break; }
done
if [[ -z $bin ]]; then
    result kvm.unit fail detail="no kvm_test binary next to $PASSVM or in $LAB_DIR/../build: build the tree first"
    exit 1
fi
out=$LAB_OUT/kvm_test.txt
timeout 240 "$bin" --gtest_brief=0 >"$out" 2>&1
rc=$?
passed=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) tests\?.*/\1/p' "$out" | tail -n1)
skipped=$(sed -n 's/^\[  SKIPPED \] \([0-9]*\) tests\?.*/\1/p' "$out" | tail -n1)
failed=$(grep -c '^\[  FAILED  \] [A-Za-z]' "$out")
if [[ $rc -eq 0 && ${skipped:-0} -eq 0 && ${passed:-0} -gt 0 ]]; then
    result kvm.unit pass passed=${passed:-0} skipped=${skipped:-0}
else
    result kvm.unit fail passed=${passed:-0} skipped=${skipped:-0} failed=$failed \
        detail="kvm_test exit $rc: $(grep -E '^\[  (FAILED|SKIPPED) \]|Failure|no usable KVM' "$out" | head -n 6 | tr '\n' ' ')"
fi
