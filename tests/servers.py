"""Servers that tests start as a user would (``python -m ...`` on a loopback port), and stop again."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Servers:
    """Processes started by a test, all stopped at its end (SIGTERM, then SIGKILL)."""

    def __init__(self, workdir: Path):
        self.workdir, self.procs = workdir, []

    def start(self, *args, ready_url=None, ready_method="get", timeout=180):
        log = open(self.workdir / f"proc{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, *args], cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.procs.append(proc)
        deadline = time.monotonic() + timeout
        while ready_url and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{args} exited: {(self.workdir / log.name).read_text()[-2000:]}")
            try:
                if getattr(requests, ready_method)(ready_url, timeout=2).status_code < 500:
                    return proc
            except requests.RequestException:
                time.sleep(0.3)
        if ready_url:
            raise AssertionError(f"{args} not ready at {ready_url}")
        return proc

    def stop(self, proc, kill=False):
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self):
        for proc in self.procs:
            self.stop(proc)
