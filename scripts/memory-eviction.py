#!/usr/bin/env python3
"""Memory before, during and after idle eviction: does RSS come down when objects leave memory?

Usage: scripts/memory-eviction.py path/to/stead [OBJECTS] [IDLE_EVICT_MS] [KEEP_NAMES]

KEEP_NAMES (`true`, the default, or `false`) is `[objects] keep_names`: whether each counter,
reached by name, also stores its name.

Starts `stead serve` on 127.0.0.1:0 with 2 cores, a temp data directory and a short
`idle_evict_ms`, activates OBJECTS distinct counters (one increment each, pipelined over a few
keep-alive connections), waits until `/metrics` reports every one evicted, then activates them
all a second time (memory freed by the first eviction should be reused, not added to). Last it
restarts the server on the same data directory, so the resident memory of the recovered store
index alone can be read off. VmRSS and the anonymous part of it (/proc/PID/smaps_rollup) are
sampled at each step. Prints a Markdown section (without its heading); exits 1 if a step failed.
"""

import os
import shutil
import socket
import sys
import tempfile
import time

import stead_server

CONNECTIONS = 8
PIPELINE_DEPTH = 64
EVICTION_WAIT_S = 120


def memory_kib(pid):
    """(VmRSS, anonymous resident) of a process in KiB."""
    rss = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    anonymous = 0
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Anonymous:"):
                anonymous = int(line.split()[1])
    return rss, anonymous


def read_response(sock, buffer):
    """Reads one HTTP/1.1 response with a Content-Length body; returns (status, body, rest)."""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("connection closed mid-response")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("connection closed mid-body")
        rest += chunk
    status = int(head.split(b" ", 2)[1])
    return status, rest[:length], rest[length:]


def get(addr, path):
    with socket.create_connection(addr, timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: m\r\n\r\n".encode())
        _, body, _ = read_response(sock, b"")
    return body.decode()


def metric_sum(addr, name):
    total = 0
    for line in get(addr, "/metrics").splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def activate(addr, objects):
    """One increment on each of `objects` counters; returns the count of non-200 answers."""
    socks = [socket.create_connection(addr, timeout=30) for _ in range(CONNECTIONS)]
    buffers = [b""] * CONNECTIONS
    failed = 0
    n = 0
    while n < objects:
        sent = []
        for i, sock in enumerate(socks):
            count = min(PIPELINE_DEPTH, objects - n)
            if count <= 0:
                break
            requests = b"".join(
                f"GET /objects/counter/c{n + k}/increment HTTP/1.1\r\nHost: m\r\n\r\n".encode()
                for k in range(count)
            )
            sock.sendall(requests)
            sent.append((i, count))
            n += count
        for i, count in sent:
            for _ in range(count):
                status, _, buffers[i] = read_response(socks[i], buffers[i])
                failed += status != 200
    for sock in socks:
        sock.close()
    return failed


def wait_evicted(addr):
    deadline = time.monotonic() + EVICTION_WAIT_S
    while time.monotonic() < deadline:
        if metric_sum(addr, "stead_active_objects") == 0:
            return True
        time.sleep(0.2)
    return False


def main():
    binary = sys.argv[1]
    objects = int(sys.argv[2]) if len(sys.argv) > 2 else 130_000
    idle_evict_ms = int(sys.argv[3]) if len(sys.argv) > 3 else 15000
    keep_names = sys.argv[4] if len(sys.argv) > 4 else "true"
    if keep_names not in ("true", "false"):
        sys.exit("KEEP_NAMES is true or false")
    work = tempfile.mkdtemp(prefix="stead-memory-")
    config_path = os.path.join(work, "stead.toml")
    with open(config_path, "w") as config:
        config.write(f"[objects]\nidle_evict_ms = {idle_evict_ms}\nkeep_names = {keep_names}\n")
    data_dir = os.path.join(work, "data")
    stderr = open(os.path.join(work, "stderr.log"), "w")
    rows = []
    problems = []

    server, addr = stead_server.start(binary, data_dir, stderr, "--config", config_path)
    time.sleep(0.5)
    rows.append(("started, empty store", 0, *memory_kib(server.pid)))
    for round_name in ("first", "second"):
        started = time.monotonic()
        failed = activate(addr, objects)
        seconds = time.monotonic() - started
        if failed:
            problems.append(f"{failed} increments of the {round_name} round did not answer 200")
        active = metric_sum(addr, "stead_active_objects")
        rows.append((f"{round_name} round: all activated ({seconds:.0f} s)", active,
                     *memory_kib(server.pid)))
        if not wait_evicted(addr):
            problems.append(f"objects still active {EVICTION_WAIT_S} s after the {round_name} round")
        time.sleep(idle_evict_ms / 1000 + 1)
        rows.append((f"{round_name} round: all evicted", metric_sum(addr, "stead_active_objects"),
                     *memory_kib(server.pid)))
    keys = metric_sum(addr, "stead_storage_keys")
    # Each counter holds its value, and its name when names are kept.
    expected_keys = objects * (2 if keep_names == "true" else 1)
    if keys != expected_keys:
        problems.append(f"the store holds {keys} keys, expected {expected_keys}")
    stead_server.stop(server, timeout_s=30)

    server, addr = stead_server.start(binary, data_dir, stderr, "--config", config_path)
    time.sleep(0.5)
    metric_sum(addr, "stead_active_objects")
    rows.append(("restarted: store recovered, nothing active", 0, *memory_kib(server.pid)))
    stead_server.stop(server, timeout_s=30)
    stderr.close()
    with open(os.path.join(work, "stderr.log")) as log:
        if "panicked" in log.read():
            problems.append("the server logged a panic")
    shutil.rmtree(work, ignore_errors=True)

    empty_rss = rows[0][2]
    print(f"Command: `scripts/memory-eviction.py target/release/stead {objects} {idle_evict_ms} {keep_names}`: "
          f"one increment on each of {objects:,} counters, `idle_evict_ms = {idle_evict_ms}`, "
          "wait until `stead_active_objects` is 0, again, then a restart on the same data.\n")
    print("| step | active objects | VmRSS (MiB) | anonymous (MiB) | above empty, per object (B) |")
    print("|---|---:|---:|---:|---:|")
    for step, active, rss, anonymous in rows:
        per_object = (rss - empty_rss) * 1024 / objects
        print(f"| {step} | {active:,} | {rss / 1024:.1f} | {anonymous / 1024:.1f} "
              f"| {per_object:,.0f} |")
    print()
    for problem in problems:
        print(f"- FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
