"""A JACK server of the benchmarks' own: dummy driver, a unique name, removed afterwards.

    with jack_server(log_dir, prefix="gbbench", rate=44100, period=256) as name:
        ...  # name is None when jackd is missing or did not start; else JACK_DEFAULT_SERVER names it
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

_START_S = 10.0


def forget_dead_servers() -> None:
    """Drop JACK's server registry when no ``jackd`` runs at all (as tests/conftest.py does): a killed
    server keeps its slot, and after 8 such deaths no server starts. With a ``jackd`` alive, or no
    ``pgrep`` to tell, it is left alone."""
    if shutil.which("pgrep") is None:
        return
    if subprocess.run(["pgrep", "-x", "jackd"], capture_output=True, check=False).returncode != 0:
        for stale in glob.glob("/dev/shm/jack-shm-registry") + glob.glob("/dev/shm/jack-[0-9]*-[0-9]*"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)


def realtime_allowed() -> bool:
    """Whether a process here may take SCHED_FIFO, as jackd and its clients do in realtime mode."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return hasattr(os, "sched_setscheduler") and subprocess.run([sys.executable, "-c", probe],
                                                                capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def jack_server(log_dir: Path, *, prefix: str, rate: int = 44100, period: int = 256,
                realtime: bool = False) -> Iterator[str | None]:
    """Run ``jackd`` (dummy driver, ``rate`` Hz, ``period``-frame periods; ``realtime``: its and its
    clients' process threads on SCHED_FIFO) under a unique name starting with ``prefix``, for the block.

    Yields the name, with ``JACK_DEFAULT_SERVER`` naming it and ``JACK_NO_START_SERVER`` set meanwhile, or
    ``None`` when ``jackd`` or ``jack_wait`` is missing or the server did not answer within 10 s (see
    ``log_dir/<name>.log``). The server is stopped and its files in ``/dev/shm`` removed afterwards.
    """
    if shutil.which("jackd") is None or shutil.which("jack_wait") is None:
        yield None
        return
    forget_dead_servers()
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1", JACK_DEFAULT_SERVER=name)
    with open(log_dir / f"{name}.log", "wb") as log:
        process = subprocess.Popen(["jackd", "--realtime" if realtime else "--no-realtime", "-n", name,
                                    "-d", "dummy", "-r", str(rate), "-p", str(period)],
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    before = {key: os.environ.get(key) for key in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
    try:
        try:
            waited = subprocess.run(["jack_wait", "-w", "-t", str(int(_START_S))], env=env, capture_output=True,
                                    timeout=_START_S + 5, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            waited = False
        os.environ.update(JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1")  # libjack reads them per client
        yield name if waited and process.poll() is None else None
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        for leftover in glob.glob(f"/dev/shm/jack_sem.*_{name}_*") + glob.glob(f"/dev/shm/jack_{name}_*"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(leftover)
