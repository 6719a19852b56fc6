"""Shared fixtures: a headless JACK server (dummy driver) for tests that talk to real MIDI peers."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

JACK_RATE = 44100  #: sample rate of the test servers, Hz
JACK_PERIOD = 256  #: frames per period: JACK delivers MIDI once a period, 256 / 44100 s = 5.8 ms
_WAIT_S = 10
WAIT_S = 5.0  #: how long a test waits for a receiver to show what it got, seconds
Message = tuple[int, tuple[int, ...]]  #: (frame stamp, MIDI bytes)


@dataclass
class JackServer:
    """A running ``jackd`` started for tests: its server name and its process."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


#: Set by ``.ci/run``: a test skipped for a program or package that ``.ci/run`` installs fails instead, so a
#: peer that went missing from CI cannot pass unnoticed. Skips for what CI cannot have (a CUDA device, an
#: ALSA sequencer, a network where Link peers meet) stay skips.
REQUIRE_PEERS = os.environ.get("GRADBRIDGE_REQUIRE_PEERS") == "1"
#: Words of our skip messages (and of ``importorskip``'s own) that name something CI installs.
INSTALLABLE_WORDS = ("not installed", "is missing", "Debian package", "pip install", "installed by .ci/run",
                     "could not import")


def _installable_skip(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    """The reason of ``report``'s skip when it names something CI installs, else ``None``."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    reason = str(report.longrepr[2])
    return reason if any(word in reason for word in INSTALLABLE_WORDS) else None


def _fail_installable_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _installable_skip(report) if REQUIRE_PEERS else None
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = f"skipped where .ci/run should have installed what it needs (GRADBRIDGE_REQUIRE_PEERS=1): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_installable_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_installable_skip(outcome.get_result())


def _need_jackd() -> None:
    missing = [tool for tool in ("jackd", "jack_wait") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (Debian package jackd2); JACK MIDI tests need it")


def _forget_dead_servers() -> None:
    """Drop JACK's server registry when no ``jackd`` runs at all.

    JACK keeps a registry of at most 8 servers in shared memory; a server that was killed rather than
    stopped keeps its slot, and after 8 such deaths no server starts ("Too many servers already active").
    With no jackd alive every slot is stale, so removing the registry is safe; JACK makes a new one.
    """
    if shutil.which("pgrep") is None:  # cannot tell whether a jackd is alive: leave the registry alone
        return
    alive = subprocess.run(["pgrep", "-x", "jackd"], capture_output=True).returncode == 0
    if not alive:
        for stale in glob.glob("/dev/shm/jack-shm-registry") + glob.glob("/dev/shm/jack-[0-9]*-[0-9]*"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)


def _realtime_allowed() -> bool:
    """Whether a process here may take SCHED_FIFO, as jackd and its clients do in realtime mode."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return hasattr(os, "sched_setscheduler") and subprocess.run([sys.executable, "-c", probe],
                                                                capture_output=True).returncode == 0


def start_jackd(log_dir: Path) -> JackServer:
    """Start ``jackd`` on the dummy driver under a unique name and wait (at most 10 s) until it answers.

    Realtime where the machine allows it: without it, on a busy machine JACK's clients miss periods (xruns)
    and JACK drops the MIDI they should have passed on in them, which tests would see as lost messages.
    """
    _forget_dead_servers()
    name = f"gbtest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log_path = log_dir / f"{name}.log"
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1", JACK_DEFAULT_SERVER=name)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            ["jackd", "--realtime" if _realtime_allowed() else "--no-realtime", "-n", name,
             "-d", "dummy", "-r", str(JACK_RATE), "-p", str(JACK_PERIOD)],
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


def end_process(process: subprocess.Popen) -> None:  # type: ignore[type-arg]
    """Stop a peer program the tests started: terminate it, and kill it if it is still there after 5 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def stop_jackd(server: JackServer) -> None:
    """Stop the server (terminate, then kill after 5 s) and remove the files it and its clients left."""
    end_process(server.process)
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


def parse_dump(text: str) -> list[Message]:
    """``jack_midi_dump -a`` lines (``  26624: 90 3c 64 note on ...``) as (frame, bytes); other lines skipped."""
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a line still being written
    messages = []
    for line in text.splitlines():
        head, sep, rest = line.partition(":")
        if not sep or not head.strip().isdigit():
            continue
        tokens = rest.split()
        size = 2 if 0xC0 <= int(tokens[0], 16) <= 0xDF else 3  # program change: 2 bytes; ours else: 3
        messages.append((int(head), tuple(int(t, 16) for t in tokens[:size])))
    return messages


class MidiDump:
    """``jack_midi_dump -a NAME`` on the current JACK server, its port ``NAME:input``."""

    def __init__(self, name: str, log_path: Path) -> None:
        command = ["jack_midi_dump", "-a", name]
        if shutil.which("stdbuf"):
            command = ["stdbuf", "-oL", *command]  # print each message as it comes, not at exit
        self.port = f"{name}:input"
        self.log_path = log_path
        with open(log_path, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + WAIT_S
        while self.port not in jack_ports():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                pytest.fail(f"jack_midi_dump did not show port {self.port} within {WAIT_S} s")
            time.sleep(0.02)

    def messages(self) -> list[Message]:
        return parse_dump(self.log_path.read_text())

    def wait_for(self, done: Callable[[list[tuple[int, ...]]], bool]) -> list[Message]:
        """Poll (at most ``WAIT_S``) until ``done(bytes of every message so far)``; fail with what arrived."""
        deadline = time.monotonic() + WAIT_S
        while True:
            messages = self.messages()
            if done([m for _, m in messages]):
                return messages
            if time.monotonic() > deadline:
                pytest.fail(f"receiver did not get what was expected within {WAIT_S} s; it got {messages}")
            time.sleep(0.02)

    def stop(self) -> None:
        end_process(self.process)


def jack_ports() -> list[str]:
    listed = subprocess.run(["jack_lsp"], capture_output=True, text=True, timeout=WAIT_S)
    return listed.stdout.splitlines()


@pytest.fixture
def midi_dump(jack_server: str, tmp_path: Path) -> Iterator[Callable[..., MidiDump]]:
    """Start receivers on demand (``midi_dump()`` or ``midi_dump(name)``); all are stopped after the test."""
    if shutil.which("jack_midi_dump") is None or shutil.which("jack_lsp") is None:
        pytest.skip("jack_midi_dump / jack_lsp not installed (Debian package jackd2)")
    started: list[MidiDump] = []

    def start(name: str | None = None) -> MidiDump:
        name = name or f"gbdump-{uuid.uuid4().hex[:8]}"
        started.append(MidiDump(name, tmp_path / f"{name}.txt"))
        return started[-1]

    yield start
    for dump in started:
        dump.stop()
