"""Shared machinery of the benchmark scripts: interleaved timing, medians, tables, goals, JSON results.

Every script measures its variants against a baseline taken in the same run, interleaved in blocks
(A B C, then C B A, ...) so that drift on a shared machine hits every variant alike, after warm-up
rounds that are thrown away. Figures are medians. Timing goals are reported, never enforced: a
script's exit status reflects its correctness checks only.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

#: Folder of the JSON results, beside this file.
RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: The repository root (for ``git`` and for running the command from a checkout).
REPO_ROOT = Path(__file__).resolve().parent.parent

Block = Callable[[], Sequence[float]]


def interleave(variants: Mapping[str, Block], rounds: int, warmup_rounds: int = 1) -> dict[str, list[float]]:
    """Run each variant's block ``warmup_rounds + rounds`` times, interleaved, and pool their samples.

    A block returns the samples (seconds, or any figure) it measured. Rounds alternate direction
    (A B C, C B A, A B C, ...) so no variant always runs right after the same one. Warm-up rounds run
    the same way and are discarded. Returns {variant: all samples from the counted rounds}.
    """
    if rounds < 1 or warmup_rounds < 0:
        raise ValueError(f"rounds must be >= 1 and warmup_rounds >= 0; got {rounds}, {warmup_rounds}")
    names = list(variants)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(warmup_rounds + rounds):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            got = list(variants[name]())
            if index >= warmup_rounds:
                samples[name].extend(got)
    return samples


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (NaN when empty)."""
    return statistics.median(values) if values else float("nan")


def timed(function: Callable[[], object], repeat: int) -> list[float]:
    """Call ``function`` ``repeat`` times; return each call's duration in seconds."""
    out = []
    clock = time.perf_counter
    for _ in range(repeat):
        start = clock()
        function()
        out.append(clock() - start)
    return out


@dataclass
class Goal:
    """A performance goal and whether this run met it (reported only; timings never fail a run)."""

    name: str
    target: str
    measured: str
    passed: bool


@dataclass
class Check:
    """A correctness check; a failed one makes the script exit with status 1."""

    name: str
    passed: bool
    detail: str = ""


@dataclass
class Report:
    """What a script found: tables (title → rows), goals, checks, notes, and the run's settings."""

    script: str
    quick: bool
    settings: dict[str, object] = field(default_factory=dict)
    tables: dict[str, list[dict[str, object]]] = field(default_factory=dict)
    goals: list[Goal] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: dict[str, object] = field(default_factory=lambda: environment())

    def table(self, title: str, rows: list[dict[str, object]]) -> None:
        """Add a table and print it at once (a long run shows progress)."""
        self.tables[title] = rows
        print(f"\n{title}\n{format_table(rows)}", flush=True)

    def goal(self, name: str, target: str, measured: str, passed: bool) -> None:
        self.goals.append(Goal(name, target, measured, bool(passed)))

    def check(self, name: str, passed: bool, detail: str = "") -> None:
        self.checks.append(Check(name, bool(passed), detail))

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def finish(self) -> int:
        """Print goals and checks, write the JSON results; return the exit status (1 if a check failed)."""
        goals = [{"goal": g.name, "target": g.target, "measured": g.measured,
                  "result": "pass" if g.passed else "MISS"} for g in self.goals]
        if goals:
            print(f"\ngoals (timing, reported only)\n{format_table(goals)}")
        checks = [{"check": c.name, "result": "ok" if c.passed else "FAILED", "detail": c.detail}
                  for c in self.checks]
        print(f"\ncorrectness checks\n{format_table(checks)}")
        ended = environment()
        started = dict(self.started)
        started["load_average_1min_at_end"] = ended["load_average_1min"]
        started["seconds"] = round(time.time() - float(started.pop("epoch_s")), 1)  # type: ignore[arg-type]
        payload = {"environment": started, "quick": self.quick, "settings": self.settings,
                   "tables": self.tables, "goals": [asdict(g) for g in self.goals],
                   "checks": [asdict(c) for c in self.checks], "notes": self.notes}
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.script}{'-quick' if self.quick else ''}.json"
        path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n", encoding="utf-8")
        print(f"\nwrote {path.relative_to(REPO_ROOT)}")
        failed = [c.name for c in self.checks if not c.passed]
        if failed:
            print(f"FAILED correctness checks: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0


def _jsonable(value: object) -> object:
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()  # type: ignore[no-any-return, attr-defined]
    return str(value)


def format_table(rows: Sequence[Mapping[str, object]]) -> str:
    """Rows of {column: value} as a Markdown table (columns in first-seen order; floats to 4 figures)."""
    if not rows:
        return "(no rows)"
    columns: list[str] = []
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if value == 0 or 0.01 <= abs(value) < 1e5:
            return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
        return f"{value:.3g}"
    return str(value)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def blas_threads() -> str:
    """NumPy's BLAS and its thread count (threadpoolctl, when installed), e.g. ``"openblas x2"``."""
    try:
        import numpy  # noqa: F401  (loads the BLAS library threadpoolctl inspects)
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl absent)"
    pools = [f"{p.get('internal_api')} x{p.get('num_threads')}" for p in threadpool_info()
             if p.get("user_api") == "blas"]
    return ", ".join(pools) or "none found"


def environment() -> dict[str, object]:
    """Where and when the figures were taken: date, CPUs, load, versions, commit."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, check=False, timeout=10).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    return {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "epoch_s": time.time(),
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "numpy_blas": blas_threads(),
        "git_commit": commit,
    }


def banner(title: str, quick: bool) -> None:
    """Print what runs and where (the JSON results hold the same, and the load at the end)."""
    env = environment()
    print(f"{title} ({'quick smoke run' if quick else 'full run'}); {env['date_utc']} UTC, nproc {env['nproc']}, "
          f"load {env['load_average_1min']}, python {env['python']}, numpy {env['numpy']} ({env['numpy_blas']}), "
          f"torch {env['torch']}, commit {env['git_commit']}", flush=True)


class QuietSharedChannels(logging.Filter):
    """Drops the start-up warning that many layers share MIDI channels (expected with 64 or 128 layers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "share the" not in record.getMessage()


def quiet_shared_channels() -> None:
    """Install ``QuietSharedChannels`` on the ``bridge`` logger."""
    logging.getLogger("bridge").addFilter(QuietSharedChannels())
