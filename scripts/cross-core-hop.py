#!/usr/bin/env python3
"""Measures what a cross-core hop adds to a request.

Starts `stead serve --cores 2`, opens ONE keep-alive connection (it lands on one core), and times
sequential `GET /objects/counter/{name}/value` requests (reads: no fdatasync) to many objects.
Each object is classed local or forwarded by the server's own `stead_forwarded_total` counter.
Prints the median latency of each class and their difference: the round trip to the other core.

Usage: scripts/cross-core-hop.py [path/to/stead]   (default target/release/stead)
"""
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/stead"
OBJECTS = 40
REQUESTS_PER_OBJECT = 300


def request(sock, path):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return body


def forwarded(sock):
    text = request(sock, "/metrics").decode()
    return sum(float(v) for v in re.findall(r'^stead_forwarded_total\{core="\d+"\} (\S+)', text, re.M))


def main():
    with tempfile.TemporaryDirectory() as data_dir:
        server = subprocess.Popen(
            [BINARY, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--cores", "2"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            line = server.stdout.readline()
            host, port = re.search(r"listening on (\S+):(\d+)", line).groups()
            sock = socket.create_connection((host, int(port)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            local, remote = [], []
            for index in range(OBJECTS):
                path = f"/objects/counter/hop{index}/value"
                request(sock, path)  # activate
                before = forwarded(sock)
                samples = []
                for _ in range(REQUESTS_PER_OBJECT):
                    start = time.perf_counter_ns()
                    request(sock, path)
                    samples.append((time.perf_counter_ns() - start) / 1000)
                hops = forwarded(sock) - before
                (remote if hops >= REQUESTS_PER_OBJECT else local).extend(samples)
            if not local or not remote:
                print("all objects landed on one side; run again")
                return 1
            local_median = statistics.median(local)
            remote_median = statistics.median(remote)
            print(f"local:     median {local_median:.1f} µs over {len(local)} requests")
            print(f"forwarded: median {remote_median:.1f} µs over {len(remote)} requests")
            print(f"cross-core hop (round trip): {remote_median - local_median:.1f} µs")
        finally:
            server.terminate()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
