"""Shared fixtures: a headless JACK server (dummy driver) for tests that talk to real MIDI peers."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

JACK_RATE = 44100  #: sample rate of the test servers, Hz
JACK_PERIOD = 256  #: frames per period: JACK delivers MIDI once a period, 256 / 44100 s = 5.8 ms
_WAIT_S = 10


@dataclass
class JackServer:
    """A running ``jackd`` started for tests: its server name and its process."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


def _need_jackd() -> None:
    missing = [tool for tool in ("jackd", "jack_wait") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian package jackd2); JACK MIDI tests need it")


def start_jackd(log_dir: Path) -> JackServer:
    """Start ``jackd`` on the dummy driver under a unique name and wait (at most 10 s) until it answers."""
    name = f"gbtest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log_path = log_dir / f"{name}.log"
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1", JACK_DEFAULT_SERVER=name)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["jackd", "--no-realtime", "-n", name, "-d", "dummy", "-r", str(JACK_RATE), "-p", str(JACK_PERIOD)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    server = JackServer(name, process, log_path)
    try:
        waited = subprocess.run(["jack_wait", "-w", "-t", str(_WAIT_S)], env=env, capture_output=True,
                                timeout=_WAIT_S + 5)
    except subprocess.TimeoutExpired:
        waited = None
    if waited is None or waited.returncode != 0 or process.poll() is not None:
        stop_jackd(server)
        pytest.fail(f"jackd -n {name} did not start within {_WAIT_S} s; its log:\n{log_path.read_text()[-2000:]}")
    return server


def stop_jackd(server: JackServer) -> None:
    """Stop the server (terminate, then kill after 5 s) and remove the files it and its clients left."""
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)
    for leftover in glob.glob(f"/dev/shm/jack_sem.*_{server.name}_*") + glob.glob(f"/dev/shm/jack_{server.name}_*"):
        os.remove(leftover)


@contextlib.contextmanager
def use_jack_server(name: str) -> Iterator[None]:
    """Within the block, ``JACK_DEFAULT_SERVER`` names ``name`` (restored afterwards)."""
    before = os.environ.get("JACK_DEFAULT_SERVER")
    os.environ["JACK_DEFAULT_SERVER"] = name  # libjack reads it whenever a client opens
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = before


@pytest.fixture(scope="session")
def jack_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A JACK server (dummy driver, 44.1 kHz, 256-frame periods) for the whole test session; yields its name.

    ``JACK_DEFAULT_SERVER`` names it while it runs, so JACK clients opened by the tests reach it.
    """
    _need_jackd()
    server = start_jackd(tmp_path_factory.mktemp("jack"))
    try:
        with use_jack_server(server.name):
            yield server.name
    finally:
        stop_jackd(server)


@pytest.fixture
def private_jack_server(tmp_path: Path) -> Iterator[JackServer]:
    """A JACK server of one test's own (one it may stop); ``JACK_DEFAULT_SERVER`` names it during the test."""
    _need_jackd()
    server = start_jackd(tmp_path)
    try:
        with use_jack_server(server.name):
            yield server
    finally:
        stop_jackd(server)
