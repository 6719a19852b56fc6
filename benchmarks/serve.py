"""The page at scale: a run at 1000 steps a second with 128 layers, served to two pages that play it.

Each round writes a run log at a steady pace (``RunLogWriter.append`` on a deadline schedule, what the training
hook does) for a fixed time, while ``gradbridge serve RUN`` (the real command, a process of its own) follows it
and serves it. Variants, interleaved, medians over rounds:

- ``no page``: the server runs, nobody connects (the baseline: what following and serving cost alone);
- ``two pages``: two Chromium pages (headless, Debian's) connected from the start, both playing (Web Audio);
- ``two pages + stalled``: the same, and a third client that connects and never reads.

Measured per page: frames per second delivered (frames received over the writing time), lag (a frame's
capture to its arrival in the page, on one clock: median and 95th percentile), animation frames per second
(``requestAnimationFrame`` callbacks: the page's frame rate) and long tasks (over 50 ms, the browser's
``longtask`` entries: time the page was frozen). Measured for the follower: how many frames it was behind when
the writer closed the log, and how long after the close it had delivered everything (its own report).

Checks (exit status): every page received every frame on one connection (a stalled client beside them never
made them reconnect); the follower delivered every frame with no output error. Run: ``python
benchmarks/serve.py`` (about 4 minutes here) or ``--quick`` (a smoke run: small sizes, checks only matter).
Needs aiohttp, Playwright and ``/usr/bin/chromium``.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import harness
from harness import Report, median

from bridge.frames import Frame, RunInfo
from bridge.runlog import RunLogWriter

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--autoplay-policy=no-user-gesture-required", "--disable-background-networking"]
VARIANTS = ("no page", "two pages", "two pages + stalled")
STATS = ("({framesReceived: s.framesReceived, connections: s.connections, animationFrames: s.animationFrames, "
         "longTasks: s.longTasks, longTaskMs: s.longTaskMs, soundPlayed: s.soundPlayed, lags: s.lags})")


def start_server(run: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(harness.REPO_ROOT),
                                                                     os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-m", "bridge", "serve", str(run), "--port", "0"],
                               stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    assert process.stderr is not None
    said = []
    for line in process.stderr:
        if "serving http" in line:
            return process, line.split()[2]
        said.append(line)
    raise RuntimeError(f"gradbridge serve exited with status {process.wait()} before serving: {''.join(said)}")


def finish_server(process: subprocess.Popen[str]) -> tuple[int, float, str]:
    """Wait for the follower's closing line, stop the server; (frames behind at close, seconds to finish, line)."""
    assert process.stderr is not None
    line = ""
    for line in process.stderr:
        if "frames in" in line:
            break
    os.killpg(process.pid, signal.SIGINT)
    process.wait(60)
    found = re.search(r"(\d+) frame\(s\) behind when the writer closed the log, done ([0-9.]+) s later", line)
    return (int(found.group(1)), float(found.group(2)), line) if found else (-1, float("nan"), line)


def stalled_client(url: str) -> socket.socket:
    """A WebSocket client that takes the handshake's answer and reads nothing more."""
    host_port, token = url.split("//")[1].split("/")[0], url.split("token=")[1]
    host, port = host_port.rsplit(":", 1)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect((host, int(port)))
    client.sendall(f"GET /ws?token={token} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: "
                   "Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += client.recv(1)
    return client


def write_paced(writer: RunLogWriter, layers: int, rate: float, seconds: float) -> int:
    """Append frames at ``rate`` a second for ``seconds`` (deadline schedule); returns how many."""
    rng = np.random.default_rng(0)
    walk = np.zeros(layers)
    steps = int(rate * seconds)
    start = time.perf_counter()
    for step in range(steps):
        due = start + step / rate
        while (now := time.perf_counter()) < due:
            time.sleep(min(due - now, 0.002))
        walk += rng.normal(0.0, 0.02, layers)
        writer.append(Frame(step, time.time(), np.exp(walk), loss=float(np.exp(-step / steps)), lr=0.01))
    return steps


def one_round(browser: object, variant: str, folder: Path, plan: dict[str, float]) -> dict[str, object]:
    layers, rate, seconds = int(plan["layers"]), plan["steps_per_s"], plan["seconds"]
    run = folder / f"run-{time.monotonic_ns()}.gbrun"
    writer = RunLogWriter(run, RunInfo(tuple(f"block{i}.linear" for i in range(layers)), {"mapping": "pentatonic"}))
    process, url = start_server(run)
    contexts, pages, stalled = [], [], None
    try:
        if variant != "no page":
            for _ in range(2):
                context = browser.new_context(bypass_csp=True)  # type: ignore[attr-defined]
                page = context.new_page()
                page.goto(url)
                page.wait_for_function("window.gradbridge.stats.state === 'live'", timeout=30_000)
                page.click("#play")
                contexts.append(context)
                pages.append(page)
        if variant.endswith("stalled"):
            stalled = stalled_client(url)
        before = [page.evaluate(f"(s => {STATS})(window.gradbridge.stats)") for page in pages]
        started = time.perf_counter()
        written = write_paced(writer, layers, rate, seconds)
        writing_s = time.perf_counter() - started
        writer.close()
        behind, finish_s, line = finish_server(process) if not pages else (0, 0.0, "")
        after = []
        for page in pages:
            page.wait_for_function(f"window.gradbridge.stats.framesReceived >= {written}", timeout=60_000)
            after.append(page.evaluate(f"(s => {STATS})(window.gradbridge.stats)"))
        if pages:
            behind, finish_s, line = finish_server(process)
    finally:
        for context in contexts:
            context.close()
        if stalled is not None:
            stalled.close()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            process.wait(60)
        run.unlink(missing_ok=True)
    row: dict[str, object] = {"written": written, "writing_s": writing_s, "behind": behind, "finish_s": finish_s,
                              "summary": line.strip(), "pages": []}
    for first, last in zip(before, after):
        lags = np.asarray(last["lags"][-int(written):], dtype=np.float64)
        row["pages"].append({  # type: ignore[union-attr]
            "frames": last["framesReceived"], "connections": last["connections"],
            "frames_per_s": last["framesReceived"] / writing_s,
            "lag_median_s": float(np.median(lags)) if lags.size else float("nan"),
            "lag_p95_s": float(np.percentile(lags, 95)) if lags.size else float("nan"),
            "animation_fps": (last["animationFrames"] - first["animationFrames"]) / writing_s,
            "long_tasks": last["longTasks"] - first["longTasks"],
            "long_task_ms": last["longTaskMs"] - first["longTaskMs"],
            "sound_played": last["soundPlayed"]})
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, checks only matter")
    args = parser.parse_args(argv)
    harness.banner("gradbridge page at scale", args.quick)
    plan = ({"steps_per_s": 200.0, "layers": 16, "seconds": 2.0, "rounds": 1} if args.quick else
            {"steps_per_s": 1000.0, "layers": 128, "seconds": 20.0, "rounds": 3})
    report = Report("serve", args.quick, settings=plan)
    from playwright.sync_api import sync_playwright

    results: dict[str, list[dict[str, object]]] = {variant: [] for variant in VARIANTS}
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="gradbridge-serve-") as tmp:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        for index in range(int(plan["rounds"])):
            order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                results[variant].append(one_round(browser, variant, Path(tmp), plan))
        browser.close()
    rows, pages_all = [], []
    for variant in VARIANTS:
        rounds = results[variant]
        pages = [p for r in rounds for p in r["pages"]]  # type: ignore[union-attr]
        pages_all += pages
        rows.append({
            "variant": variant, "rounds": len(rounds),
            "written steps/s": median([r["written"] / r["writing_s"] for r in rounds]),  # type: ignore[operator]
            "follower behind at close (frames)": median([float(r["behind"]) for r in rounds]),  # type: ignore[arg-type]
            "follower done after close s": median([float(r["finish_s"]) for r in rounds]),  # type: ignore[arg-type]
            "page frames/s": median([p["frames_per_s"] for p in pages]) if pages else float("nan"),
            "page lag median s": median([p["lag_median_s"] for p in pages]) if pages else float("nan"),
            "page lag p95 s": median([p["lag_p95_s"] for p in pages]) if pages else float("nan"),
            "page animation fps": median([p["animation_fps"] for p in pages]) if pages else float("nan"),
            "long tasks": median([float(p["long_tasks"]) for p in pages]) if pages else float("nan"),
            "long task ms": median([float(p["long_task_ms"]) for p in pages]) if pages else float("nan"),
            "steps played": median([float(p["sound_played"]) for p in pages]) if pages else float("nan")})
    report.table(f"a run of {plan['steps_per_s']:g} steps/s x {plan['layers']:g} layers for {plan['seconds']:g} s, "
                 f"served by gradbridge serve; medians over rounds (and over both pages)", rows)
    base = rows[0]
    for row in rows[1:]:
        row_ratio = {"variant": row["variant"],
                     "follower behind at close, vs no page": f"{row['follower behind at close (frames)']:g} vs "
                                                             f"{base['follower behind at close (frames)']:g} frames"}
        report.note(f"{row_ratio['variant']}: follower {row_ratio['follower behind at close, vs no page']}")
    two = rows[1]
    rate = plan["steps_per_s"]
    report.goal("frames delivered to each page", f">= {rate:g}/s (all written)", f"{two['page frames/s']:.0f}/s",
                float(two["page frames/s"]) >= 0.98 * rate)
    report.goal("page frame rate while it streams", ">= 30 fps", f"{two['page animation fps']:.0f} fps",
                float(two["page animation fps"]) >= 30)
    report.goal("page frozen (long tasks)", "< 5 % of the time",
                f"{float(two['long task ms']) / 10 / plan['seconds']:.1f} %",
                float(two["long task ms"]) < 0.05 * 1000 * plan["seconds"])
    report.goal("follower lag at close with two pages (and a stalled client)", "<= 100 frames (0.1 s)",
                f"{two['follower behind at close (frames)']:g} and {rows[2]['follower behind at close (frames)']:g}",
                max(float(two["follower behind at close (frames)"]), float(rows[2]["follower behind at close (frames)"]))
                <= 100)
    every = all(p["frames"] == r["written"] for v in VARIANTS for r in results[v] for p in r["pages"])  # type: ignore[union-attr]
    report.check("every page received every frame", every)
    report.check("every page stayed on its first connection", all(p["connections"] == 1 for p in pages_all))
    report.check("the follower delivered every frame, no output failed",
                 all(f"{r['written']} frames in, 0 dropped;" in str(r["summary"]) and "failed" not in str(r["summary"])
                     and "page (sound): ok" in str(r["summary"]) and "page (plots): ok" in str(r["summary"])
                     for v in VARIANTS for r in results[v]))
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
