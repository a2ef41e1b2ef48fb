"""Every command and every benchmark answers ``--help`` with its own usage line, and a user
error is one line naming the flag or path (exit 2), never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from outerloop.bench_cli import BENCHMARKS
from outerloop.cli import COMMANDS, main


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: outerloop {command}") and "options:" in out


@pytest.mark.parametrize("bench", sorted(BENCHMARKS))
def test_every_benchmark_has_help(bench: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", bench, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: outerloop bench {bench}") and "options:" in out


@pytest.mark.parametrize("argv,named", [
    (["train-ranker", "--artifacts", "/no/such/dir"], "/no/such/dir"),
    (["train-ranker", "--artifacts", "/no/such/dir", "--residual-of", "/no/ranker/here"], "--residual-of /no/ranker/here"),
    (["eval", "--artifacts", "/no/such/dir", "--json"], "--artifacts /no/such/dir"),
    (["report", "--inputs", "/no/such.json", "--out", "/tmp/outerloop-test-report"], "--inputs /no/such.json"),
])
def test_user_errors_are_one_line(argv: list[str], named: str) -> None:
    out = subprocess.run([sys.executable, "-m", "outerloop.cli", *argv], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert named in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
