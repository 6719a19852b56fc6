"""The training side of the follower process: start it, wait until its outputs are open, and at the end
wait for its report. No thread: the follower reads the run log, so nothing flows to it while training runs.

``FollowerProcess.start(setup)`` launches ``python -m bridge.follower_process`` in its own session (so the
terminal's Ctrl-C reaches only training, which then closes the log cleanly) and at a lower priority (so
its work yields to training's), sends the setup and waits for its "ready" line. Its stderr is the training
process's, so its messages show as they happen. ``finish()`` closes the pipe (the follower's sign that the
training process is done) and waits for the report; if the follower was killed, it says so.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bridge import errors
from bridge.errors import SinkError
from bridge.follower import FollowReport
from bridge.wire import FollowerSetup, report_from_dict

log = logging.getLogger("bridge")

#: The module the child runs.
CHILD_MODULE = "bridge.follower_process"
READY_TIMEOUT_S = 30.0  #: how long ``start`` waits for the follower to open the outputs, seconds
#: How much lower the follower's scheduling priority is than training's (``os.nice`` steps, POSIX).
NICENESS = 5
#: How long ``finish`` waits for a word from a follower that has stopped reporting progress, seconds.
STALL_S = 60.0
_STOP_WAIT_S = 10.0  #: after a second Ctrl-C, how long to wait for the follower to finish its files


class FollowerGone(Exception):
    """The follower process ended without its report."""


class FollowerProcess:
    """A running follower process: its ``pid``, the ``description`` of what it plays, and ``finish``."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self._stdout_fd = process.stdout.fileno()  # type: ignore[union-attr]
        self._buffer = b""
        self._eof = False  # the follower's stdout ended
        self.description = ""
        self.failed_to_open: dict[str, str] = {}
        self.clock_origin_s: float | None = None  # where its live clock's beat 0 falls, time.monotonic() s
        self.page_url: str | None = None  #: the address of the page it serves (``OutputSpec.serve``), token included
        self._report: FollowReport | None = None
        self._finished = False

    @property
    def pid(self) -> int:
        """The follower's process id."""
        return self._process.pid

    @classmethod
    def start(cls, setup: FollowerSetup, *, ready_timeout_s: float = READY_TIMEOUT_S) -> "FollowerProcess":
        """Start the follower, send ``setup``, and wait until its outputs are open.

        Raises ``SinkError`` (with the fix) when it cannot start, and ``TypeError`` / ``ValueError`` when it
        refused a setting.
        """
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        process = subprocess.Popen([sys.executable, "-m", CHILD_MODULE], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, env=env, start_new_session=True,
                                   preexec_fn=_lower_priority if os.name == "posix" else None)
        link = cls(process)
        try:
            link._open(setup, ready_timeout_s)
        except BaseException:
            link._stop()
            raise
        return link

    def finish(self, *, progress: Callable[[int, int | None], None] | None = None,
               stall_s: float = STALL_S) -> FollowReport:
        """Tell the follower training is done (its pipe ends), wait for its report and return it.

        Waits as long as the follower makes progress (it may be catching up), passing each progress
        message (frames delivered, frames left or ``None``) to ``progress``; a follower silent for
        ``stall_s`` seconds is killed. Ctrl-C while waiting stops the follower at once (its files finished
        with what they have) and goes on as ``KeyboardInterrupt``. Raises ``FollowerGone`` when it ended
        without a report (killed, crashed, stalled), saying how.
        """
        if self._report is not None:
            return self._report
        self._close_pipe()
        heard = time.monotonic()
        try:
            while True:
                message = self._read_message(1.0)
                if message is not None:
                    heard = time.monotonic()
                    if "report" in message:
                        self._report = report_from_dict(message["report"])
                        return self._report
                    if "progress" in message and progress is not None:
                        progress(int(message["progress"]), message.get("left"))
                    continue
                if self._eof:
                    raise FollowerGone(self._ended_how())
                if time.monotonic() - heard > stall_s:
                    self._process.kill()
                    raise FollowerGone(f"made no progress for {stall_s:g} s and was killed")
        except KeyboardInterrupt:
            self._interrupt()
            raise
        finally:
            self._stop()

    def _open(self, setup: FollowerSetup, timeout_s: float) -> None:
        try:
            os.write(self._process.stdin.fileno(), setup.to_bytes())  # type: ignore[union-attr]
        except BrokenPipeError as exc:  # the child died at once; the missing ready line below says so
            log.debug("the follower closed its stdin before taking the setup: %s", exc)
        deadline = time.monotonic() + timeout_s
        message = None
        while message is None and time.monotonic() < deadline and not self._eof:
            message = self._read_message(min(0.5, max(0.0, deadline - time.monotonic())))
        if message is None:
            status = self._process.poll()
            what = (f"did not open its outputs within {timeout_s:g} s" if status is None
                    else f"exited with status {status} before opening its outputs (its messages are above)")
            raise SinkError(f"the follower process (python -m {CHILD_MODULE}) {what}. Fix: make sure "
                            f"`{sys.executable} -m {CHILD_MODULE}` can start here, or pass process=False to "
                            f"follow the run log on a thread of this process")
        if not message.get("ready"):
            cls = error_class(str(message.get("type", "")), str(message.get("kind", "")))
            raise cls(f"the follower process could not open the outputs: {message.get('error')}")
        self.description = str(message["description"])
        self.failed_to_open = dict(message["failed_to_open"])
        origin = message.get("clock_origin_s")
        self.clock_origin_s = float(origin) if isinstance(origin, (int, float)) else None
        self.page_url = message.get("page_url")

    def _read_message(self, timeout_s: float) -> dict[str, Any] | None:
        """The follower's next line of JSON, or ``None`` at its end or after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._stdout_fd], [], [], left)[0]:
                return None
            chunk = os.read(self._stdout_fd, 65536)
            if not chunk:
                self._eof = True
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            value = json.loads(line.decode("utf-8"))
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def _ended_how(self) -> str:
        try:
            status = self._process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            status = None
        if status is not None and status < 0:
            name = signal.Signals(-status).name if -status in signal.Signals._value2member_map_ else str(-status)
            return f"was killed by {name}"
        return f"exited with status {status} without reporting (its messages are above)"

    def _interrupt(self) -> None:
        """Ctrl-C while waiting: the follower finishes its files with what they have, at once."""
        for _ in range(2):
            try:
                os.kill(self._process.pid, signal.SIGINT)
            except OSError:
                return
        try:
            self._process.wait(timeout=_STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            log.warning("the follower process did not stop within %g s; killing it", _STOP_WAIT_S)

    def _close_pipe(self) -> None:
        stdin = self._process.stdin
        if stdin is not None and not stdin.closed:
            try:
                stdin.close()
            except OSError as exc:  # the follower is gone; finish() says how
                log.debug("closing the follower's pipe: %s", exc)

    def _stop(self) -> None:
        """Close the pipes and make sure the follower is gone (no orphan)."""
        self._close_pipe()
        if self._process.poll() is None:
            try:
                self._process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()


def error_class(name: str, base: str) -> type[Exception]:
    """The class to raise here for an error the follower process reported: the same gradbridge error
    (``bridge.errors``) when it was one, else ``TypeError`` or ``ValueError`` as its ``base``, else
    ``SinkError``."""
    found = getattr(errors, name, None)
    if isinstance(found, type) and issubclass(found, errors.GradbridgeError):
        return found
    return {"TypeError": TypeError, "ValueError": ValueError}.get(base, SinkError)


def _lower_priority() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        os.nice(NICENESS)
    except OSError:
        pass
