"""A private ``redis-server`` for tests that must configure it (a password, ``maxmemory``) or
crash it, which the shared Redis on 127.0.0.1:6379 may not be.

Without the ``redis-server`` binary the test skips, except under ``CI=true`` where that is a
failure: CI must never pass by skipping the Redis integration tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

__all__ = ["PrivateRedis", "redis_server_binary"]


def redis_server_binary() -> str:
    """The ``redis-server`` path; skips (fails under ``CI=true``) when it is not installed."""
    found = shutil.which("redis-server")
    if found:
        return found
    msg = "redis-server is not installed (make services installs it; Debian: apt-get install redis)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own on a free port (append-only, fsync always), restartable.

    ``args`` are extra server options, e.g. ``["--maxmemory", "8mb"]``; ``password`` turns on
    ``requirepass`` (:attr:`url` then carries no password, :attr:`auth_url` does).
    """

    def __init__(self, workdir: Path, *args: str, password: str | None = None) -> None:
        self.port = _free_port()
        self.dir = workdir
        self.args = list(args)
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL, without credentials."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def auth_url(self) -> str:
        """The server's URL with its password (when it has one)."""
        if self.password is None:
            return self.url
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30.0) -> None:
        """Start the server and wait until it answers PING."""
        command = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.dir),
            *self.args,
        ]
        if self.password is not None:
            command += ["--requirepass", self.password]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.auth_url, socket_connect_timeout=1)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if client.ping():
                        return
                except redis.exceptions.ConnectionError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    msg = f"the private redis-server on port {self.port} did not start"
                    raise RuntimeError(msg)
                time.sleep(0.05)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        """A client with the password."""
        return redis.Redis.from_url(self.auth_url)

    def crash(self) -> None:
        """SIGKILL the server."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
