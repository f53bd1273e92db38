#!/usr/bin/env bash
# passvm loads its HTTP transport (api/http.h) only to serve or use the API: the binary does not link
# cpp-httplib or OpenSSL, the API works with the module beside the binary, and without the module
# --api-socket and `passvm remote` stop with a message naming the file and the fix.
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
