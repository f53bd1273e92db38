#!/usr/bin/env python3
"""checks-passed.py RESULTS.json CHECK...: exit 0 when every CHECK (scenario/check or check) is in lab/run's
result document and passed; otherwise say which did not, with its detail, and exit 1. For runs whose
verdict is something else (lab/run --expect-fail) but where some checks must still pass."""
import json
import sys

if len(sys.argv) < 3:
    sys.exit(__doc__)
try:
    checks = json.load(open(sys.argv[1])).get("checks", [])
except (OSError, ValueError) as e:
    sys.exit(f"checks-passed: cannot read {sys.argv[1]}: {e}")
bad = []
for want in sys.argv[2:]:
    found = [c for c in checks if want in (c.get("check"), f"{c.get('scenario')}/{c.get('check')}")]
    if not found:
        bad.append(f"{want}: not in the results")
    bad += [f"{want}: failed: {c.get('detail', '')}" for c in found if not c.get("pass")]
for line in bad:
    print(f"checks-passed: {line}", file=sys.stderr)
sys.exit(1 if bad else 0)
