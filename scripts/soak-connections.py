#!/usr/bin/env python3
"""Connection churn soak: many short connections against one `stead serve`, memory sampled.

Usage: scripts/soak-connections.py path/to/stead [CONNECTIONS] [CLIENT_THREADS]

Starts the server on 127.0.0.1:0 with a temp data directory and 2 cores, opens CONNECTIONS
short connections (one `GET /healthz` with `Connection: close` each) from CLIENT_THREADS threads,
samples the server's resident memory (VmRSS) ten times along the way, then checks that the
server still answers, that it logged no panic, and that SIGTERM ends it within 10 s. Prints a
Markdown section; exits 1 if any check failed.
"""

import os
import socket
import sys
import tempfile
import threading
import time

import stead_server

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def one_connection(addr):
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(REQUEST)
        reply = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.startswith(b"HTTP/1.1 200")


def main():
    binary = sys.argv[1]
    total = int(sys.argv[2]) if len(sys.argv) > 2 else 200_000
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    data_dir = tempfile.mkdtemp(prefix="stead-soak-")
    stderr_path = os.path.join(data_dir, "stderr.log")
    stderr = open(stderr_path, "w")
    server, addr = stead_server.start(binary, os.path.join(data_dir, "data"), stderr)

    done = [0]
    failed = [0]
    lock = threading.Lock()
    samples = [(0, rss_kib(server.pid))]
    step = max(total // 10, 1)

    def client(count):
        for _ in range(count):
            try:
                ok = one_connection(addr)
            except OSError:
                ok = False
            with lock:
                done[0] += 1
                failed[0] += 0 if ok else 1
                if done[0] % step == 0:
                    samples.append((done[0], rss_kib(server.pid)))

    started = time.monotonic()
    workers = [threading.Thread(target=client, args=(total // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started

    answers_after = one_connection(addr)
    stopped = stead_server.stop(server, timeout_s=10)
    stderr.close()
    with open(stderr_path) as log:
        panicked = "panicked" in log.read()

    first_rss = samples[1][1] if len(samples) > 1 else samples[0][1]
    last_rss = samples[-1][1]
    ok = failed[0] == 0 and answers_after and stopped and not panicked
    print(f"Command: `scripts/soak-connections.py target/release/stead {total} {threads}` "
          f"({done[0]} connections in {elapsed:.0f} s, {done[0] / elapsed:.0f}/s).")
    print()
    print("| connections | server RSS |")
    print("|---:|---:|")
    for count, kib in samples:
        print(f"| {count} | {kib / 1024:.1f} MiB |")
    print()
    print(f"Failed connections: {failed[0]}; answers after the soak: {answers_after}; "
          f"panic logged: {panicked}; SIGTERM exit within 10 s: {stopped}. RSS after the first "
          f"10 %: {first_rss / 1024:.1f} MiB, at the end: {last_rss / 1024:.1f} MiB.")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
