# Reads strace -f -Y output on stdin; writes "THREAD<TAB>CALL<TAB>IOCTL REQUEST<TAB>COUNT" lines to argv[1].
import re, sys, collections
out = sys.argv[1]
seen = collections.Counter()
start = re.compile(r'^(\d+)<([^>]*)> (?:<\.\.\. (\w+) resumed>|(\w+)\((.*))')
for line in sys.stdin:
    m = start.match(line)
    if not m:
        continue
    comm = m.group(2)
    if m.group(3):
        continue  # the call was counted when it started
    call = m.group(4)
    key = (comm, call, '')
    if call == 'ioctl':
        a = re.match(r'\d+, ([A-Za-z0-9_]+(?:\([^)]*\))?|0x[0-9a-f]+)', m.group(5))
        key = (comm, call, a.group(1) if a else '?')
    seen[key] += 1
with open(out, 'w') as f:
    for (comm, call, arg), n in sorted(seen.items()):
        f.write(f"{comm}\t{call}\t{arg}\t{n}\n")
