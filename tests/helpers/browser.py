"""Headless Chromium for the report tests: Debian's ``chromium`` package, installed with
apt-get by the session fixture when it is missing.

:func:`check_images` loads a page with a small inline script appended that, on ``load``,
writes what the page holds (images and whether each decoded, sliders) into the DOM as
JSON; ``--dump-dom`` prints the DOM, and the JSON is read back from it.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["check_images", "chromium", "find_chromium", "screenshot"]

INSTALL_TIMEOUT_S = 900
_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var out = document.createElement('pre');
  out.id = 'tokcal-check';
  out.textContent = JSON.stringify({
    images: imgs.length, bad: bad.map(function (i) { return i.alt; }),
    widths: imgs.map(function (i) { return i.naturalWidth; }),
    sliders: document.querySelectorAll('input[type=range]').length,
    visible_steps: Array.prototype.filter.call(document.querySelectorAll('.step'),
      function (e) { return e.offsetParent !== null; }).length,
    steps: document.querySelectorAll('.step').length,
    js: document.documentElement.className, title: document.title,
    selectors: SELECTORS.reduce(function (acc, sel) {
      acc[sel] = document.querySelectorAll(sel).length; return acc; }, {})});
  document.body.appendChild(out);
});
</script>"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of a headless-capable Chromium; apt-get installs Debian's when missing."""
    found = find_chromium()
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("chromium is not installed and apt-get is not available to install it "
                    "(install Debian's 'chromium' package, or any chromium/google-chrome on PATH)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log = []
    for cmd in ([apt, "install", "-y", "-q", "chromium"], [apt, "update", "-q"],
                [apt, "install", "-y", "-q", "chromium"]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        log.append(f"$ {' '.join(cmd)} -> {proc.returncode}\n{proc.stderr[-600:]}")
        if cmd[-1] == "chromium" and proc.returncode == 0:
            break
    found = find_chromium()
    if not found:
        if os.geteuid() != 0:
            pytest.skip("chromium is not installed and apt-get needs root to install it")
        pytest.fail("could not install chromium with apt-get:\n" + "\n".join(log))
    return found


def _run(chrome: str, args: list[str], profile: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check_images(chrome: str, page: Path, work: Path, selectors: tuple[str, ...] = ()) -> dict:
    """Load ``page`` (a copy with the check script) and return what the script saw;
    ``selectors`` (CSS) are counted in the loaded DOM, under ``"selectors"``."""
    text = page.read_text(encoding="utf-8")
    probe = page.with_name(f"{page.stem}.check.html")
    check = _CHECK.replace("SELECTORS", json.dumps(list(selectors)))
    probe.write_text(text.replace("</body>", check + "</body>"), encoding="utf-8")
    proc = _run(chrome, ["--virtual-time-budget=15000", "--dump-dom", probe.resolve().as_uri()], work / "profile-dom")
    found = re.search(r'<pre id="tokcal-check">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert found, f"the page's check script left nothing (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def screenshot(chrome: str, page: Path, png: Path, work: Path, size: tuple[int, int] = (1280, 1500)) -> Path:
    """A PNG of the top of ``page`` at ``size`` (width, height)."""
    proc = _run(chrome, ["--hide-scrollbars", f"--window-size={size[0]},{size[1]}", "--virtual-time-budget=15000",
                         f"--screenshot={png.resolve()}", page.resolve().as_uri()], work / "profile-shot")
    assert png.is_file() and png.stat().st_size > 0, f"no screenshot (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
    return png
