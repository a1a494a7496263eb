"""Starting and stopping `stead serve` for the measurement scripts in this directory."""

import os
import signal
import subprocess


def start(binary, data_dir, stderr, *flags):
    """Starts `stead serve` on 127.0.0.1:0 with 2 cores; returns the process and its address
    (read from the "listening on" line it prints once its signal handlers are installed)."""
    server = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir,
         "--cores", "2", *flags],
        stdout=subprocess.PIPE, stderr=stderr, text=True,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    line = server.stdout.readline()
    host, port = line.split("listening on ")[1].split()[0].rsplit(":", 1)
    return server, (host, int(port))


def stop(server, timeout_s):
    """SIGTERM, then SIGKILL after `timeout_s`; whether the server stopped by itself."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        return False
