#!/usr/bin/env bash
# passvm loads its HTTP transport (api/http.h) only to serve or use the API: the binary does not link
# cpp-httplib or OpenSSL, the API works with the module beside the binary, and without the module
# --api-socket and `passvm remote` stop with a message naming the file and the fix; confined, it
# serves request bodies of every size.
#   http_module_test.sh PASSVM_BINARY
set -uo pipefail
passvm=$1
failed=0
dir=$(mktemp -d /tmp/passvm-http-test.XXXXXX)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; failed=1; }

needed=$(readelf -d "$passvm" | grep NEEDED)
for lib in libcpp-httplib libssl libcrypto libbrotli; do
    if grep -q "$lib" <<<"$needed"; then fail "passvm links $lib: $needed"; else echo "ok: passvm does not link $lib"; fi
done

# Beside the binary, as in the build tree: served and used. A sanitized build runs unconfined: its leak
# check at exit makes system calls no thread's filter allows.
confine=()
grep -q libasan <<<"$needed" && confine=(--seccomp off)
"$passvm" "${confine[@]}" --api-socket "$dir/api.sock" 2>"$dir/server.err" &
server=$!
for _ in $(seq 100); do [ -S "$dir/api.sock" ] && break; sleep 0.1; done
if out=$("$passvm" remote --api-socket "$dir/api.sock" ping 2>&1) && grep -q "passvm v" <<<"$out"; then
    echo "ok: remote ping through the module: $out"
else
    fail "remote ping: $out; server said: $(cat "$dir/server.err")"
fi
# Request bodies of every size up to the limit, confined: freeing one of some 30 KB once made glibc read a
# /proc file in the request's thread (shrinking its arena), which the filter answered by ending passvm.
answers=$(python3 - "$dir/api.sock" <<'PY'
import json, socket, sys
for size in (1000, 32000, 25000, 1000000, 32000, 3000000):
    body = json.dumps({"payload": {"kernel": "/nonexistent/bzImage"}, "filler": "y" * size}).encode()
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    try:
        s.connect(sys.argv[1])
        s.sendall(b"PUT /api/v1/vm.create HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        line = s.recv(4096).decode(errors="replace").split("\r\n")[0].split(" ")
        print(line[1] if len(line) > 1 else "none", end=" ")
    except OSError as e:
        print(type(e).__name__, end=" ")
    finally:
        s.close()
PY
)
if [ "$answers" = "400 400 400 400 400 400 " ] && kill -0 "$server" 2>/dev/null; then
    echo "ok: six large request bodies answered (400: no such kernel), passvm still serving"
else
    fail "large request bodies answered '$answers'; server said: $(tail -n 3 "$dir/server.err")"
fi
"$passvm" remote --api-socket "$dir/api.sock" shutdown-vmm >/dev/null 2>&1
for _ in $(seq 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$server" 2>/dev/null; then fail "passvm did not exit after shutdown-vmm"; else
    wait "$server"; status=$?; server=""
    [ "$status" = 0 ] && echo "ok: server exited 0" || fail "server exited $status: $(cat "$dir/server.err")"
fi

# The binary alone: refused with the way out, exit status 1, no socket left behind.
mkdir "$dir/alone"
cp "$passvm" "$dir/alone/passvm"
for cmd in "--api-socket $dir/alone/api.sock" "remote --api-socket $dir/api.sock ping"; do
    err=$(timeout 20 "$dir/alone/passvm" $cmd 2>&1 >/dev/null); status=$?
    if [ "$status" = 1 ] && grep -q "needs passvm's HTTP module, passvm-http.so, which is neither beside passvm" <<<"$err" \
        && grep -q "cmake --install" <<<"$err"; then
        echo "ok: passvm $cmd without the module -> $status: ${err:0:120}"
    else
        fail "passvm $cmd without the module exited $status, said: $err"
    fi
done
[ -e "$dir/alone/api.sock" ] && fail "a socket was left behind without the module"

exit $failed
