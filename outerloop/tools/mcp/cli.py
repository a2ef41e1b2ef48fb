"""``outerloop mcp``: serve outerloop's tools to MCP clients, over stdio (default) or HTTP.

    outerloop mcp --artifacts artifacts/demo                       # stdio: a client starts it
    OUTERLOOP_MCP_TOKEN=... outerloop mcp --artifacts artifacts/demo --transport http --port 8765

Stdio speaks MCP on stdin/stdout, so everything else (logs, warnings) goes to stderr. HTTP serves
streamable HTTP at ``/mcp`` and refuses to start without a bearer token (``OUTERLOOP_MCP_TOKEN`` or
``--token-file``), checked before the artifacts are even loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

from outerloop.agents.plugins import add_plugin_flags, load_plugins, load_specs  # noqa: F401  (load_specs: re-exported)
from outerloop.errors import UserInputError
from outerloop.telemetry import add_cli_flag, setup_for_cli
from outerloop.topology import add_topology_flags, topology_from_args


def configure(p: argparse.ArgumentParser) -> None:
    from outerloop.storage.embedded import EMBEDDED_LIFETIME

    p.epilog = EMBEDDED_LIFETIME
    p.add_argument("--artifacts", type=Path, default=None, help="trained artifacts (default: OUTERLOOP_ARTIFACTS_DIR)")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio",
                   help="stdio for local clients that start the server; http (streamable HTTP at /mcp) for remote ones")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address")
    p.add_argument("--port", type=int, default=8765, help="HTTP port")
    p.add_argument("--token-file", type=Path, default=None,
                   help="file holding the HTTP bearer token (default: OUTERLOOP_MCP_TOKEN)")
    add_plugin_flags(p, tools_help="your @tool specs to serve besides the built-ins (MODULE:NAME, a spec or a list "
                                   "of them; comma-separated, repeatable)",
                     agents_help="your @agent specs for refresh_user's outer loop (MODULE:NAME; comma-separated, "
                                 "repeatable)")
    p.add_argument("--no-ranker", action="store_true", help="recommend in retrieval order")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    add_cli_flag(p)
    add_topology_flags(p.add_argument_group("redis (the same settings as outerloop serve and outerloop daemon)"))


def read_token(token_file: Path | None, from_env: str | None) -> str:
    """The HTTP bearer token: the file's first line, else the environment's; never empty."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserInputError(f"--token-file {token_file}: {exc.strerror or exc}") from None
        if not token:
            raise UserInputError(f"--token-file {token_file} is empty")
        return token
    if from_env and from_env.strip():
        return from_env.strip()
    raise UserInputError("refusing to serve MCP over HTTP without a bearer token: set OUTERLOOP_MCP_TOKEN "
                         "or pass --token-file (stdio needs none)")


def run(args: argparse.Namespace) -> int:
    import anyio

    from outerloop.config import get_settings

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    topology = topology_from_args(args, settings)  # bad values fail here, naming the flag
    token = read_token(args.token_file, settings.mcp_token) if args.transport == "http" else None
    if token is not None:
        from outerloop.tools.mcp.server import StaticTokenVerifier

        StaticTokenVerifier(token)  # rejects a short token now, before loading anything
    plugins = load_plugins(args.agents, args.tools)
    tools, agents = plugins.tools, plugins.agents
    # stdio speaks MCP on stdout: the console exporter (bound to sys.stdout at set-up) writes to stderr
    with contextlib.redirect_stdout(sys.stderr) if args.transport == "stdio" else contextlib.nullcontext():
        setup_for_cli("outerloop-mcp", args.telemetry)  # the SDK's providers flush at exit
    anyio.run(_serve, args, settings, topology, token, tools, agents)
    return 0


class StdinLines:
    """stdin's lines, read on the event loop. The SDK's stdio transport reads stdin in a worker
    thread that a cancellation cannot interrupt, so a server whose client keeps stdin open and
    quiet never stopped on SIGTERM or Ctrl-C (and a supervisor's SIGKILL then orphaned the embedded
    Redis); lines read here stop with the task that awaits them."""

    def __init__(self, fd: int = 0, limit_bytes: int = 64 << 20) -> None:
        self.fd, self.limit_bytes = fd, limit_bytes
        self._reader: Any = None

    @staticmethod
    def usable(fd: int = 0) -> bool:
        """A pipe, socket or terminal (what an event loop can watch; a regular file is not)."""
        import os
        import stat

        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return False
        return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)

    def __aiter__(self) -> "StdinLines":
        return self

    async def __anext__(self) -> str:
        import asyncio
        import os

        if self._reader is None:
            self._reader = asyncio.StreamReader(limit=self.limit_bytes)
            protocol = asyncio.StreamReaderProtocol(self._reader)
            pipe = os.fdopen(os.dup(self.fd), "rb", buffering=0)
            await asyncio.get_running_loop().connect_read_pipe(lambda: protocol, pipe)
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


async def serve_stdio(server: Any) -> None:
    """``server.run_stdio_async()`` with stdin read by :class:`StdinLines` (when stdin is a pipe,
    socket or terminal), so that SIGTERM and Ctrl-C stop it."""
    if not StdinLines.usable():
        await server.run_stdio_async()
        return
    from mcp.server.stdio import stdio_server

    lowlevel = server._lowlevel_server  # what run_stdio_async runs (mcp 2.3 has no public handle)
    async with stdio_server(stdin=StdinLines()) as (read_stream, write_stream):  # type: ignore[arg-type]
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())


SHUTDOWN_DEADLINE_S = 15.0  # after SIGINT/SIGTERM, a stdio server still running this long is forced out


async def run_until_signalled(main: Any) -> None:
    """Run ``main()`` until it returns or SIGINT/SIGTERM arrives; a signal cancels it through an
    anyio cancel scope (level-triggered: every later checkpoint is cancelled too, where asyncio's
    own Ctrl-C handling cancels the main task once). In full test-suite runs an ``mcp`` over stdio
    twice did not stop within 30 s of one SIGINT, and never when run alone; the cause was not
    found. As a last resort, a process still alive :data:`SHUTDOWN_DEADLINE_S` after the signal
    writes every thread's stack to stderr (to find the cause) and exits with ``128 + signal``. A
    forced exit skips the embedded Redis hand-over, so a server this process was the last
    holder of is adopted by the next process that opens the directory, as after a SIGKILL."""
    import signal

    import anyio

    async with anyio.create_task_group() as tg:
        async def watch() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    _force_exit_after(SHUTDOWN_DEADLINE_S, int(signum))
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch)
        await main()
        tg.cancel_scope.cancel()


def _force_exit_after(seconds: float, signum: int) -> None:
    import faulthandler
    import os
    import threading

    def force() -> None:
        print(f"outerloop mcp: still running {seconds:g} s after signal {signum}; stacks follow, then exit",
              file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(128 + signum)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


async def _serve(args: argparse.Namespace, settings: Any, topology: Any, token: str | None, tools: list[Any],
                 agents: list[Any]) -> None:
    import torch

    from outerloop.api.serve_cli import load_serving
    from outerloop.tools.mcp.server import build_server, http_app, open_service

    torch.set_num_threads(1)
    artifacts, ranker = load_serving(args.artifacts or settings.artifacts_dir, no_ranker=args.no_ranker)
    async with open_service(artifacts, redis=topology.target(), keys=topology.keys(), ranker=ranker,
                            tools=tools, agents=agents) as svc:
        host = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 literal
        base_url = f"http://{host}:{args.port}"
        server = build_server(svc.registry, svc.deps, read_only=svc.read_only, token=token, base_url=base_url)
        if args.transport == "stdio":
            await run_until_signalled(lambda: serve_stdio(server))
            return
        import uvicorn

        app = http_app(server, host=args.host)
        print(f"outerloop mcp: {len(svc.registry)} tools at {base_url}/mcp (bearer token required)",
              file=sys.stderr, flush=True)
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                access_log=False, lifespan="on")
        await uvicorn.Server(config).serve()
