#!/usr/bin/env python3
# api: replays a recorded sequence of API requests against a passvm (or any cloud-hypervisor) API
# socket and checks each answer; the first mismatch ends the run with status 1.
#
#   replay.py --socket PATH [--set NAME=VALUE]... SEQUENCE.json
#
# SEQUENCE.json is a list of steps:
#   {"name": "...",                          what the step stands for (printed)
#    "method": "PUT", "path": "/api/v1/vm.create",
#    "body_file": "vm.create.json"           relative to the sequence file, or
#    "body": {...},                          inline JSON
#    "expect_status": 204,
#    "expect": {"state": "Running", "device_tree.@DEVICE_ID@.pci_bdf": "0000:00:05.0"},
#                                            dotted paths into the JSON answer, and their values
#    "expect_error_contains": "vsock",       a substring of the error message (the JSON list, joined)
#    "capture": {"DEVICE_ID": "id"},         remember answer values for @NAME@ in later steps
#    "retry_seconds": 10}                    retry until the step passes (how Kata waits for vmm.ping)
# @NAME@ in bodies, paths and expectations is replaced by --set NAME=VALUE or a captured value; a
# placeholder left unset is an error before anything is sent. Values are JSON-escaped in bodies.
# Standard library only, so the lab's guests and hosts can run it as is.
import argparse
import http.client
import json
import os
import re
import socket
import sys
import time


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


PLACEHOLDER = re.compile(r"@([A-Z0-9_]+)@")


def substitute(text, values, escape):
    def one(m):
        name = m.group(1)
        if name not in values:
            raise KeyError(f"@{name}@ is not set: pass --set {name}=VALUE")
        value = values[name]
        return json.dumps(value)[1:-1] if escape else value

    return PLACEHOLDER.sub(one, text)


def lookup(answer, dotted):
    value = answer
    for key in dotted.split("."):
        if isinstance(value, list):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise KeyError(dotted)
    return value


def error_text(body):
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, list):
        return ": ".join(str(m) for m in parsed)
    return str(parsed)


def run_step(socket_path, step, base, values, timeout):
    """Sends one step; returns (problem or None, status, body)."""
    if "body_file" in step:
        with open(os.path.join(base, step["body_file"]), encoding="utf-8") as f:
            body = f.read()
    elif "body" in step:
        body = json.dumps(step["body"])
    else:
        body = None
    if body is not None:
        body = substitute(body, values, escape=True)
        json.loads(body)  # a substitution must not break the JSON
    path = substitute(step["path"], values, escape=False)
    conn = UnixHTTPConnection(socket_path, timeout)
    try:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(step["method"], path, body=body, headers=headers)
        response = conn.getresponse()
        status, answer = response.status, response.read().decode("utf-8", "replace")
    except OSError as e:
        return f"no answer: {e}", None, ""
    finally:
        conn.close()

    expected = step.get("expect_status")
    if expected is not None and status != expected:
        return f"expected HTTP {expected}, got {status}: {answer}", status, answer
    if "expect_error_contains" in step:
        wanted = substitute(step["expect_error_contains"], values, escape=False)
        if wanted not in error_text(answer):
            return f"expected an error mentioning {wanted!r}, got: {answer}", status, answer
    checks = step.get("expect", {})
    captures = step.get("capture", {})
    if checks or captures:
        try:
            parsed = json.loads(answer)
        except ValueError:
            return f"expected a JSON answer, got: {answer!r}", status, answer
        for dotted, want in checks.items():
            dotted = substitute(dotted, values, escape=False)
            if isinstance(want, str):
                want = substitute(want, values, escape=False)
            try:
                got = lookup(parsed, dotted)
            except (KeyError, IndexError, ValueError):
                return f"{dotted}: missing from the answer: {answer}", status, answer
            if got != want:
                return f"{dotted}: expected {want!r}, got {got!r}", status, answer
        for name, dotted in captures.items():
            try:
                values[name] = str(lookup(parsed, dotted))
            except (KeyError, IndexError, ValueError):
                return f"cannot capture {name}: {dotted} is not in the answer: {answer}", status, answer
    return None, status, answer


def main():
    parser = argparse.ArgumentParser(description="Replay API requests against a passvm API socket.")
    parser.add_argument("--socket", required=True, help="the API socket (passvm --api-socket PATH)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a value for @NAME@ in the sequence and its bodies")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for each answer")
    parser.add_argument("sequence", help="the sequence file (a JSON list of steps)")
    args = parser.parse_args()

    values = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item}: expected NAME=VALUE")
        values[name] = value
    with open(args.sequence, encoding="utf-8") as f:
        steps = json.load(f)
    base = os.path.dirname(os.path.abspath(args.sequence))

    for number, step in enumerate(steps, 1):
        label = f"[{number}] {step['method']} {step['path']}"
        if "name" in step:
            label += f" ({step['name']})"
        deadline = time.monotonic() + step.get("retry_seconds", 0)
        while True:
            try:
                problem, status, _ = run_step(args.socket, step, base, values, args.timeout)
            except (KeyError, ValueError, OSError) as e:
                print(f"{label}: cannot send: {e}", file=sys.stderr)
                return 1
            if problem is None or time.monotonic() >= deadline:
                break
            time.sleep(0.01)
        if problem is not None:
            print(f"{label} -> FAILED: {problem}", file=sys.stderr)
            return 1
        print(f"{label} -> {status} ok", flush=True)
    print(f"all {len(steps)} steps as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
