"""The report in a real browser: headless Chromium loads ``index.html`` from disk, offline, and
every figure must decode (``naturalWidth > 0``); a screenshot must not be blank.

Chromium is Debian's ``chromium`` package: :func:`tests.browser.ensure_chromium` installs it when
missing, and the Makefile's ``test`` target runs that step first. Without it this module fails,
never skips.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, ensure_chromium

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]
# appended to a copy of the page: writes every image's load state into the DOM for --dump-dom
CHECK_SCRIPT = ('<script>window.addEventListener("load",()=>{const d=document.createElement("pre");'
                'd.id="imgcheck";d.textContent=JSON.stringify([...document.images].map('
                'i=>({src:i.getAttribute("src"),complete:i.complete,w:i.naturalWidth,h:i.naturalHeight})));'
                "document.body.appendChild(d);});</script>")


def chromium(args: list[str], user_data_dir: Path) -> str:
    out = subprocess.run([str(CHROMIUM), *FLAGS, f"--user-data-dir={user_data_dir}", *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def browser() -> Path:
    try:
        return ensure_chromium()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"headless Chromium is required for the report test: {exc}")


def test_report_renders_offline_with_every_figure(browser: Path, tmp_path: Path) -> None:
    from tests.evals.test_report import build_sample_report

    index = build_sample_report(tmp_path / "report")
    check = index.with_name("check.html")
    check.write_text(index.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = chromium(["--virtual-time-budget=5000", "--dump-dom", check.as_uri()], tmp_path / "ud1")
    m = re.search(r'<pre id="imgcheck">(.*?)</pre>', dom, re.S)
    assert m, dom[-500:]
    images = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    figures = sorted((index.parent / "plots").glob("*.png"))
    assert len(images) == len(figures) == 7  # every figure the report wrote, loaded by the browser
    for img in images:
        assert img["complete"] and img["w"] > 0 and img["h"] > 0, img
    assert "http://" not in index.read_text() and "https://" not in index.read_text()  # nothing fetched

    shot = tmp_path / "shot.png"
    chromium(["--window-size=1100,2400", f"--screenshot={shot}", index.as_uri()], tmp_path / "ud2")
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]  # (H, W, 3) floats in [0, 1]
    assert pixels.shape[0] >= 2000 and pixels.std() > 0.05  # not blank
    assert (pixels.reshape(-1, 3).std(1) > 0.1).mean() > 0.01  # coloured figure pixels, not just text
