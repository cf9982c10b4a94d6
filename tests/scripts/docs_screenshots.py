"""Make the screenshots in docs/ (headless Chromium):

* ``docs/mlflow_run.png`` and ``docs/mlflow_artifacts.png``: a real MLflow server, a real
  tiny training logged into it by the callback (default metrics), the run's "Model metrics"
  tab and a reliability diagram in its "Artifacts" tab;
* ``docs/report_analysis.png``: the report of three simulated runs (top of the page and
  one run's per-sample section).

``docs/report.png`` comes from the demo: ``TOKCAL_UPDATE_DOCS=1 pytest tests/test_demo.py -k chromium``.

Usage: ``python -m tests.scripts.docs_screenshots [mlflow] [analysis]`` (both by default).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.helpers.browser import find_chromium, screenshot

DOCS = Path(__file__).resolve().parents[2] / "docs"


# MLflow's UI is a single-page app that draws its charts after fetching the metrics, which
# --screenshot does not wait for; a DevTools Protocol session (aiohttp's websocket client)
# lets the page settle, closes the assistant panel and picks the "Model training" view.
_HIDE = "var s = document.createElement('style'); s.textContent = '.modebar{display:none !important}'; " \
        "document.head.appendChild(s); 1"


class _Page:
    def __init__(self, ws: Any) -> None:
        self.ws, self.n = ws, 0

    async def call(self, method: str, **params: Any) -> dict:
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=120)
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def js(self, expr: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        return r.get("result", {}).get("value")


def _click(text_or_label: str) -> str:
    return ("(function () { var b = Array.prototype.find.call(document.querySelectorAll('button,label,span'), "
            f"function (e) {{ return e.getAttribute('aria-label') === {text_or_label!r} || e.innerText === {text_or_label!r}; }}); "
            "if (b) { b.click(); } return !!b; })()")


def _shots(chrome: str, work: Path, shots: list[tuple[str, Path]], size: tuple[int, int], settle_s: float = 20) -> None:
    """Screenshots of MLflow UI pages: each URL opened, given ``settle_s`` seconds, saved."""
    import asyncio
    import base64
    import json
    import subprocess
    import urllib.request

    import aiohttp

    from tests.helpers.mlflow_server import free_port

    port = free_port()
    proc = subprocess.Popen([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--hide-scrollbars", "--no-first-run", f"--remote-debugging-port={port}",
                             f"--user-data-dir={work / 'profile-cdp'}", f"--window-size={size[0]},{size[1]}",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def run() -> None:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
                    ws_url = next(p for p in json.load(r) if p["type"] == "page")["webSocketDebuggerUrl"]
                break
            except OSError:
                await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
            page = _Page(ws)
            await page.call("Page.enable")
            await page.call("Page.navigate", url=shots[0][0])
            await asyncio.sleep(8)
            await page.js(_click("Close"))  # the assistant panel
            await page.js(_click("Model training"))
            await asyncio.sleep(2)
            for url, png in shots:
                await page.call("Page.navigate", url=url)
                await asyncio.sleep(settle_s)
                await page.js(_HIDE)
                data = (await page.call("Page.captureScreenshot", format="png"))["data"]
                png.write_bytes(base64.b64decode(data))

    try:
        asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(10)


def _save(src: Path, dst: Path, width: int | None = None, crop: tuple[int, int, int, int] | None = None) -> None:
    from PIL import Image

    with Image.open(src) as img:
        img = img.convert("RGB")
        if crop:
            img = img.crop(crop)
        if width and img.width > width:
            img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
        img.quantize(colors=128).save(dst, optimize=True)
    print(f"wrote {dst} ({dst.stat().st_size // 1024} KB)")


def mlflow_pages(chrome: str, work: Path) -> None:
    from mlflow import MlflowClient

    from tests.helpers.mlflow_server import MlflowServer
    from tests.helpers.models import make_tiny_checkpoint
    from tests.helpers.tokenizers import small_bpe_tokenizer
    from tests.helpers.training import train_tiny
    from tokcal import DecisionTrackingCallback
    from tokcal.jobs.state import read_state

    server = MlflowServer(work / "server").start()
    try:
        ckpt = make_tiny_checkpoint(work / "base", small_bpe_tokenizer(), seed=0)
        out = work / "out"
        callback = DecisionTrackingCallback(backend="mlflow", tracking_uri=server.uri, experiment="my-finetune")
        train_tiny(ckpt, out, callbacks=[callback], max_steps=40, eval_steps=8, n_train=64, n_eval=48,
                   logging_steps=8, learning_rate=3e-2)
        callback.close()
        (t,) = read_state(out / "tokcal.json")["trackers"]
        client = MlflowClient(server.uri)
        client.set_tag(t["run_id"], "mlflow.runName", "my-finetune")
        base = f"{server.uri}/#/experiments/{t['experiment_id']}/runs/{t['run_id']}"
        path = "tokcal/plots/eval/reliability/step_000040.png"
        _shots(chrome, work, [(f"{base}/model-metrics", work / "run.png"),
                              (f"{base}/artifacts/{path}", work / "arts.png")], (1400, 1150))
        _save(work / "run.png", DOCS / "mlflow_run.png", width=1100)
        _save(work / "arts.png", DOCS / "mlflow_artifacts.png", width=1100)
    finally:
        server.stop()


def analysis_page(chrome: str, work: Path) -> None:
    from tokcal.demo.simulated import simulate_run
    from tokcal.jobs.report import read_local
    from tokcal.jobs.report_html import write_report
    from tokcal.trackers import open_tracker

    steps = [0, 50, 100, 150, 200, 250, 300, 350]
    series = []
    for i, (name, skill) in enumerate((("run1-lr1e-5", 1.3), ("run2-lr3e-5", 1.0), ("run3-lr1e-4", 0.7))):
        store = work / name
        with open_tracker("local", local_dir=store, run_name=name) as tracker:
            # one eval set (data_seed) scored by three runs: the comparison pairs them sample by sample
            simulate_run(tracker, seed=i + 1, steps=steps, skill=skill, text=(i == 1), data_seed=7)
        (s,) = read_local(store)
        s.name = f"local {name} · eval"
        series.append(s)
    page = write_report(series, work / "report.html", title="tokcal report (simulated runs)", step_figures=False)
    # Cut out of the page: the top and the per-sample section of the run that has records.
    text = page.read_text(encoding="utf-8")
    start, end = text.index("<h2>Evolution over steps</h2>"), text.index(f"<h2>{series[1].name}</h2>")
    text = text[:start] + text[end:]
    cut = page.with_name("cut.html")
    cut.write_text(text.replace(f"<h2>{series[1].name}</h2>", f"<h2>{series[1].name} (one of the three runs)</h2>"),
                   encoding="utf-8")
    shot = screenshot(chrome, cut, work / "analysis.png", work, size=(1280, 2500))
    _save(shot, DOCS / "report_analysis.png")


def main(argv: list[str]) -> None:
    chrome = find_chromium()
    if chrome is None:
        raise SystemExit("chromium is not installed (apt-get install chromium)")
    which = set(argv) or {"mlflow", "analysis"}
    with tempfile.TemporaryDirectory(prefix="tokcal-docs-") as tmp:
        work = Path(tmp)
        t0 = time.time()
        if "analysis" in which:
            analysis_page(chrome, work)
        if "mlflow" in which:
            mlflow_pages(chrome, work)
        print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
