#!/usr/bin/env python3
"""The `dedup` built-in with many concurrent waiters: N clients ask one object for one URL at
once; a local upstream answers after DELAY and counts its hits. Reports, for N = 1 and N = 1000
(interleaved rounds, medians), the time from the clients' release to the last answer, how far
that is past the upstream's delay, and the upstream hits per round (1 if every waiter shared
the fetch).

Usage: scripts/bench-dedup.py target/release/stead [rounds] [delay_ms]   (default: 5 200)
"""

import http.server
import os
import socket
import socketserver
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import stead_server  # noqa: E402


class Upstream(http.server.BaseHTTPRequestHandler):
    hits = 0
    delay = 0.2
    lock = threading.Lock()

    def do_GET(self):
        with Upstream.lock:
            Upstream.hits += 1
        time.sleep(Upstream.delay)
        body = b"shared answer"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def round_trip(address, path, count):
    """Opens `count` connections, sends the request on all at once; seconds to the last answer
    and the statuses."""
    sockets = [socket.create_connection(address) for _ in range(count)]
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    statuses = [None] * count
    barrier = threading.Barrier(count + 1)

    def client(index, sock):
        barrier.wait()
        sock.sendall(request)
        data = b""
        # An answer that is not the upstream's (a 503, say) ends with the connection's close
        # or its own end: stop at the end of any head-and-body that is complete.
        while b"shared answer" not in data and not (b"\r\n\r\n" in data and b" 200 " not in data[:16]):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        statuses[index] = data.split(b" ", 2)[1] if data else b"-"

    threads = [threading.Thread(target=client, args=(i, s)) for i, s in enumerate(sockets)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.monotonic()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    for sock in sockets:
        sock.close()
    return elapsed, statuses


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/stead"
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    Upstream.delay = (int(sys.argv[3]) if len(sys.argv) > 3 else 200) / 1000
    upstream = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    up_port = upstream.server_address[1]
    with tempfile.TemporaryDirectory() as work:
        config = os.path.join(work, "stead.toml")
        with open(config, "w") as out:
            out.write(f'[fetch]\nallow_hosts = ["127.0.0.1:{up_port}"]\n')
        server, address = stead_server.start(
            binary, os.path.join(work, "data"), sys.stderr, "--config", config)
        results = {1: [], 1000: []}
        hits = {1: [], 1000: []}
        try:
            for r in range(rounds):
                for count in (1, 1000):
                    before = Upstream.hits
                    path = f"/objects/dedup/d{count}/fetch?url=http://127.0.0.1:{up_port}/x{r}"
                    elapsed, statuses = round_trip(address, path, count)
                    bad = [s for s in statuses if s != b"200"]
                    if bad:
                        print(f"round {r}, {count} waiters: {len(bad)} answers not 200: {bad[:3]}")
                    results[count].append(elapsed)
                    hits[count].append(Upstream.hits - before)
        finally:
            stead_server.stop(server, 10)
    delay_ms = Upstream.delay * 1000
    print(f"Machine: {os.cpu_count()} cores; stead serve --cores 2; upstream delay {delay_ms:.0f} ms;")
    print(f"medians of {rounds} interleaved rounds.")
    print()
    print("| waiters | last answer after (ms) | past the upstream's delay (ms) | upstream hits per round |")
    print("|---:|---:|---:|---:|")
    for count in (1, 1000):
        median = statistics.median(results[count]) * 1000
        print(f"| {count} | {median:.0f} | {median - delay_ms:.0f} | {max(hits[count])} |")


if __name__ == "__main__":
    main()
