"""A private redis-server a test can stop, kill and restart (the shared one must stay up)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis

from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent


def server_binary() -> str:
    """redis-server on PATH, or the embedded one the CI scripts install."""
    return subprocess.run(
        [str(ROOT / ".ci" / "redis-server-path")], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


class RedisServer:
    """redis-server on a free port with its data in ``directory``; AOF (everysec) when ``appendonly``."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [server_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
            + ["--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec"]
            + ["--dir", str(self.directory), "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: what a crash or a power cut does; only what reached the AOF survives."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
