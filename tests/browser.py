"""Headless Chromium for the browser tests: Debian's ``chromium`` package at ``/usr/bin/chromium``.

:func:`ensure_chromium` installs it when missing (``apt-get update && apt-get install -y
chromium``; root, network to the Debian mirror); ``make test`` runs this file first, so a fresh
clone needs nothing done by hand. Without Chromium the browser tests fail, never skip.

It also installs Debian's ``wrk`` (:func:`ensure_wrk`), the HTTP load generator
``outerloop bench cluster`` drives, the same way.

    python tests/browser.py     # install Chromium and wrk if missing, print their paths
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")


def apt_install(package: str) -> None:
    """Install Debian's ``package`` (root and apt-get), or say exactly what to run."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise RuntimeError(f"{package} is missing and cannot be installed here (needs root and apt-get): "
                           f"run `apt-get update && apt-get install -y {package}`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", package], check=True, env=env, stdout=subprocess.DEVNULL)


def ensure_chromium() -> Path:
    """``/usr/bin/chromium``, installing Debian's package first when it is missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt_install("chromium")
    if not CHROMIUM.exists():
        raise RuntimeError("apt-get installed chromium but /usr/bin/chromium is still missing")
    return CHROMIUM


def ensure_wrk() -> Path:
    """``wrk`` on PATH, installing Debian's package first when it is missing."""
    found = shutil.which("wrk")
    if found:
        return Path(found)
    apt_install("wrk")
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get installed wrk but it is still not on PATH")
    return Path(found)


if __name__ == "__main__":
    print(ensure_chromium())
    print(ensure_wrk())
    sys.exit(0)
