"""The benchmark scripts' quick runs: they exit 0 only when their correctness checks pass.

Their timings on a quick run mean nothing and are not looked at; the checks (fast render equals the post's
samples, the run log holds every frame and its size is the documented formula, the watch reads no norm per
layer on the training thread, the plot keeps each pixel column's lowest and highest norm and every alarm, every
page gets every frame)
are what this test holds them to.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _page_tools_missing() -> bool:
    import importlib.util

    return (not Path("/usr/bin/chromium").exists() or importlib.util.find_spec("playwright") is None
            or importlib.util.find_spec("aiohttp") is None)


@pytest.mark.parametrize("script", ["overhead.py", "render.py", "runlog.py", "throughput.py", "latency.py", "plot.py",
                                    "serve.py", "clock.py"])
def test_quick_benchmark_checks_pass(script: str) -> None:
    if script == "serve.py" and _page_tools_missing():
        pytest.skip("serve.py needs aiohttp, Playwright and Debian's chromium (installed by .ci/run)")
    run = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick"], capture_output=True, text=True,
                         timeout=600, cwd=BENCHMARKS.parent)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    table = lines[lines.index("correctness checks") + 3:]  # after the title, the header and the rule
    rows = [line.split("|")[1:-1] for line in table[: next(i for i, l in enumerate(table + [""]) if not l.startswith("|"))]]
    assert len(rows) >= 3
    assert [cells[1].strip() for cells in rows] == ["ok"] * len(rows)
