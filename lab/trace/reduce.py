# Reads strace -f -Y output on stdin; writes one line per (thread name, call, ioctl request, confined):
#   THREAD<TAB>CALL<TAB>REQUEST<TAB>CONFINED<TAB>COUNT<TAB>FIRST CALL AS STRACE PRINTED IT
# to argv[1]. CONFINED is "yes" for calls a seccomp filter applied to: the thread had loaded one
# (a seccomp(SECCOMP_SET_MODE_FILTER, ...) that returned 0: libseccomp's probes of the kernel fail) or
# was started by a thread that had. Setup before that is "no".
import collections
import re
import sys

out = sys.argv[1]
seen = collections.Counter()
first = {}
confined = set()
loading = set()  # threads inside a seccomp(SECCOMP_SET_MODE_FILTER) call with a filter
line_re = re.compile(r'^(\d+)<([^>]*)> (?:<\.\.\. (\w+) resumed>(.*)|(\w+)\((.*))')
result_re = re.compile(r'\)\s+=\s+(\d+)')
for line in sys.stdin:
    m = line_re.match(line)
    if not m:
        continue
    tid, comm = int(m.group(1)), m.group(2)
    call = m.group(3) or m.group(5)
    rest = m.group(4) if m.group(3) else m.group(6)
    if call in ("clone", "clone3") and tid in confined:
        r = result_re.search(rest)
        if r:
            confined.add(int(r.group(1)))  # the new thread inherits the filter
    if call == "seccomp" and tid in loading and re.search(r'=\s+0\b', rest):
        confined.add(tid)  # counted when it started, confined from its end
    if m.group(3):
        if call == "seccomp":
            loading.discard(tid)
        continue  # the end of a call counted when it started
    key = (comm, call, '', "yes" if tid in confined else "no")
    if call == 'ioctl':
        a = re.match(r'\d+, ([A-Za-z0-9_]+(?:\([^)]*\))?|0x[0-9a-f]+)', rest)
        key = (comm, call, a.group(1) if a else '?', key[3])
    seen[key] += 1
    first.setdefault(key, line.strip()[:300].replace('\t', ' '))
    if call == "seccomp" and "SECCOMP_SET_MODE_FILTER" in rest and "filter=" in rest:
        if re.search(r'\)\s+=\s+0\b', rest):
            confined.add(tid)
        else:
            loading.add(tid)
with open(out, 'w') as f:
    for key, n in sorted(seen.items()):
        f.write("\t".join(key) + f"\t{n}\t{first[key]}\n")
