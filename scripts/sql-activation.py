#!/usr/bin/env python3
"""How long an object with a SQL database of a given size takes to activate.

An object's database is loaded whole at activation (its pages are values of the object, and
the whole object is loaded), so activation time grows with the database. For each size: fill
the `sql` object's table with 100 KB rows (at most 8 MB per request, within one event's
16 MiB of pages), restart the server, then time the first query (activation: load every page
from the store, open SQLite, run `SELECT count(*)`) and, for contrast, the second one (active).
Medians over the runs, each on a fresh data directory.

Usage: scripts/sql-activation.py [runs] [sizes in MB...]   (default: 3 10 100)
"""

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import stead_server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "stead")
ROW_BYTES = 100_000
ROWS_PER_REQUEST = 80


def query(address, sql, params=()):
    connection = http.client.HTTPConnection(*address, timeout=120)
    body = json.dumps({"query": sql, "params": list(params)})
    started = time.perf_counter()
    connection.request("POST", "/objects/sql/big/exec", body)
    response = connection.getresponse()
    text = response.read()
    elapsed = time.perf_counter() - started
    connection.close()
    if response.status != 200:
        raise SystemExit(f"{sql}: {response.status} {text!r}")
    return elapsed


def size_of(address):
    connection = http.client.HTTPConnection(*address, timeout=60)
    connection.request("GET", "/objects/sql/big/size")
    size = json.loads(connection.getresponse().read())["databaseSize"]
    connection.close()
    return size


def measure(size_mb):
    with tempfile.TemporaryDirectory() as data_dir:
        server, address = stead_server.start(BINARY, data_dir, subprocess.DEVNULL)
        query(address, "CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB)")
        rows = size_mb * 1_000_000 // ROW_BYTES
        while rows > 0:
            batch = min(rows, ROWS_PER_REQUEST)
            query(address,
                  "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT ?) "
                  "INSERT INTO t (data) SELECT randomblob(?) FROM n", (batch, ROW_BYTES))
            rows -= batch
        size = size_of(address)
        stead_server.stop(server, 60)
        server, address = stead_server.start(BINARY, data_dir, subprocess.DEVNULL)
        first = query(address, "SELECT count(*) FROM t")
        second = query(address, "SELECT count(*) FROM t")
        stead_server.stop(server, 60)
        return size, first, second


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    sizes = [int(size) for size in sys.argv[2:]] or [10, 100]
    subprocess.run(["cargo", "build", "--release", "--bin", "stead"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("| database | first query (activation) ms | second query (active) ms |")
    print("|---:|---:|---:|")
    for size_mb in sizes:
        results = [measure(size_mb) for _ in range(runs)]
        size = statistics.median(result[0] for result in results)
        first = statistics.median(result[1] for result in results) * 1000
        second = statistics.median(result[2] for result in results) * 1000
        print(f"| {size / 1_000_000:.1f} MB | {first:.1f} | {second:.2f} |")


if __name__ == "__main__":
    main()
