"""The training side of ``bridge.watch(..., process=True)``: start the outputs process and forward frames to it.

``OutputsProcess.start(setup)`` launches ``python -m bridge.outputs_process`` in its own session (so the
terminal's Ctrl-C reaches only training, which then closes it cleanly), sends the setup and waits until the
outputs are open. Its ``forwarder`` is the one consumer the training process's dispatcher thread feeds on
its behalf: it writes each frame's record (``bridge.outputs_process``) into the child's stdin without ever
blocking; when the pipe is full the frame is dropped and counted. ``finish`` closes the pipe, waits for the
child's final stats and merges them with the training side's.
"""

from __future__ import annotations

import atexit
import collections
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from typing import IO, Any

from bridge.dispatch import DispatchStats
from bridge.errors import SinkError
from bridge.frames import Frame
from bridge.outputs_process import OutputsSetup, encode_frame, stats_from_dict

log = logging.getLogger("bridge")

#: The module the child runs.
CHILD_MODULE = "bridge.outputs_process"
#: Bytes the pipe to the child may hold before frames are dropped (Linux; elsewhere the system's default).
PIPE_BYTES = 1 << 20
READY_TIMEOUT_S = 30.0  #: how long ``start`` waits for the child to open the outputs, seconds
FINISH_TIMEOUT_S = 120.0  #: how long ``finish`` waits for the child to finish every output, seconds
_EXIT_TIMEOUT_S = 10.0  #: the same at interpreter exit, when ``finish`` was never called
_STDERR_LINES = 20  #: lines of the child's stderr kept for error messages
_FIX = "pass process=False to run the outputs on a thread of the training process instead"


class Forwarder:
    """The consumer that writes each frame into the outputs process's stdin, never blocking.

    Records go whole: when the pipe has no room for a record the frame is dropped and counted. A record
    the pipe took only in part (records longer than the pipe's atomic size) has its rest written first on
    the next frame, so the stream is never corrupted; while that rest does not fit either, frames are dropped.
    """

    name = "outputs process"

    def __init__(self, pipe: IO[bytes]) -> None:
        self._pipe = pipe
        self._fd = pipe.fileno()
        self._rest = memoryview(b"")
        self.frames_sent = 0  #: frames whose record went (at least in part) into the pipe
        self.frames_dropped = 0  #: frames dropped because the pipe was full

    def handle(self, frame: Frame) -> None:
        if self._rest and not self._write_rest():
            self.frames_dropped += 1
            return
        record = encode_frame(frame)
        try:
            written = os.write(self._fd, record)
        except BlockingIOError:
            self.frames_dropped += 1
            return
        self.frames_sent += 1
        self._rest = memoryview(record)[written:]

    def close(self) -> None:
        """Write any rest of a record (waiting for room), then close the pipe: the child reads its end."""
        try:
            if self._rest:
                os.set_blocking(self._fd, True)
                while self._rest:
                    self._rest = self._rest[os.write(self._fd, self._rest):]
        finally:
            self._pipe.close()

    def _write_rest(self) -> bool:
        try:
            self._rest = self._rest[os.write(self._fd, self._rest):]
        except BlockingIOError:
            return False
        return not self._rest


class OutputsProcess:
    """A running outputs process: its ``forwarder``, the ``description`` of what it plays, and ``finish``."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process
        self._stdout_fd = process.stdout.fileno()  # type: ignore[union-attr]
        self._stdout_buffer = b""
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._relay = threading.Thread(target=self._relay_stderr, name="gradbridge-outputs-stderr", daemon=True)
        self._relay.start()
        self.forwarder = Forwarder(process.stdin)  # type: ignore[arg-type]
        self.description = ""
        self.failed_to_open: dict[str, str] = {}
        self._stats: DispatchStats | None = None

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    @classmethod
    def start(cls, setup: OutputsSetup, *, ready_timeout_s: float = READY_TIMEOUT_S) -> "OutputsProcess":
        """Start the child, send ``setup``, and wait until its outputs are open.

        Raises ``SinkError`` (with the child's last stderr lines and the fix) when it cannot start, and
        ``TypeError`` / ``ValueError`` when it refused a setting.
        """
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        process = subprocess.Popen([sys.executable, "-m", CHILD_MODULE], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
        link = cls(process)
        try:
            link._open(setup, ready_timeout_s)
        except BaseException:
            link._stop()
            raise
        atexit.register(link._finish_at_exit)
        return link

    def finish(self, stats: DispatchStats, timeout_s: float | None = None) -> DispatchStats:
        """Merge the training side's ``stats`` (its dispatcher, closed) with the child's, once it is done.

        Closes the pipe if the dispatcher did not, waits up to ``timeout_s`` seconds (``None``:
        ``FINISH_TIMEOUT_S``) for the child's final stats, killing it after that, and returns the run's
        stats: frames in as training handed them, done as the outputs took them, everything else dropped;
        errors per output, open failures included.
        """
        if self._stats is not None:
            return self._stats
        timeout_s = FINISH_TIMEOUT_S if timeout_s is None else timeout_s
        atexit.unregister(self._finish_at_exit)
        try:
            self.forwarder.close()
        except OSError as exc:  # the child is gone; what it said (or did not) tells the rest
            log.debug("closing the pipe to the outputs process: %s", exc)
        message, failure = self._read_message(timeout_s), None
        child = None
        if message is not None and "stats" in message:
            child = stats_from_dict(message["stats"])
        elif (status := self._exit_status()) is None:
            failure = f"did not finish within {timeout_s:g} s and was killed; files may be incomplete"
        else:
            failure = f"exited with status {status} before reporting{self._tail()}"
        self._stop()
        if failure is not None:
            log.warning("the outputs process %s", failure)
        if self.forwarder.frames_dropped:
            log.warning("%d frames dropped because the outputs process fell behind (its pipe was full)",
                        self.forwarder.frames_dropped)
        self._stats = merge_stats(stats, self.forwarder, child, failure, self.failed_to_open)
        return self._stats

    def _open(self, setup: OutputsSetup, timeout_s: float) -> None:
        fd = self.forwarder._fd
        try:
            import fcntl

            size_flag = getattr(fcntl, "F_SETPIPE_SZ", None)
            if size_flag is not None:
                fcntl.fcntl(fd, size_flag, PIPE_BYTES)
        except OSError as exc:  # above /proc/sys/fs/pipe-max-size: the default size still works
            log.debug("could not resize the pipe to the outputs process to %d bytes: %s", PIPE_BYTES, exc)
        try:
            self._write_all(fd, setup.to_bytes())
        except BrokenPipeError as exc:  # the child died at once; the missing ready line below says so
            log.debug("the outputs process closed its stdin before taking the setup: %s", exc)
        os.set_blocking(fd, False)
        message = self._read_message(timeout_s)
        if message is None:
            status = self._exit_status()
            what = f"did not open its outputs within {timeout_s:g} s" if status is None else (
                f"exited with status {status} before opening its outputs")
            raise SinkError(f"the outputs process (python -m {CHILD_MODULE}) {what}{self._tail()}. Fix: {_FIX}")
        if not message.get("ready"):
            error, kind = str(message.get("error")), message.get("kind")
            text = f"the outputs process could not open the outputs: {error}"
            raise (TypeError if kind == "TypeError" else ValueError if kind == "ValueError" else SinkError)(
                text if kind in ("TypeError", "ValueError") else f"{text}. Fix: {_FIX}")
        self.description = str(message["description"])
        self.failed_to_open = dict(message["failed_to_open"])

    @staticmethod
    def _write_all(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def _read_message(self, timeout_s: float) -> dict[str, Any] | None:
        """The child's next line of JSON, or ``None`` at its end or after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._stdout_buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._stdout_fd], [], [], left)[0]:
                return None
            chunk = os.read(self._stdout_fd, 65536)
            if not chunk:
                return None
            self._stdout_buffer += chunk
        line, self._stdout_buffer = self._stdout_buffer.split(b"\n", 1)
        value = json.loads(line.decode("utf-8"))
        return value if isinstance(value, dict) else None

    def _exit_status(self) -> int | None:
        """The child's exit status once its stdout has ended (it may take a moment to exit), or ``None``."""
        try:
            return self._process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return None

    def _relay_stderr(self) -> None:
        """Copy the child's stderr to ours, line by line, keeping the last lines for error messages."""
        for raw in self._process.stderr:  # type: ignore[union-attr]
            line = raw.decode("utf-8", errors="replace")
            self._stderr_tail.append(line.rstrip("\n"))
            sys.stderr.write(line)

    def _tail(self) -> str:
        self._relay.join(timeout=1.0)
        lines = [line for line in self._stderr_tail if line.strip()]
        return ("; its last output: " + " | ".join(lines[-5:])) if lines else ""

    def _stop(self) -> None:
        """Close the pipes and make sure the child is gone."""
        if not self.forwarder._pipe.closed:
            self.forwarder._pipe.close()
        if self._process.poll() is None:
            try:
                self._process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._relay.join(timeout=1.0)
        self._process.stdout.close()  # type: ignore[union-attr]

    def _finish_at_exit(self) -> None:
        self.finish(DispatchStats(), timeout_s=_EXIT_TIMEOUT_S)


def merge_stats(parent: DispatchStats, forwarder: Forwarder, child: DispatchStats | None, failure: str | None,
                failed_to_open: dict[str, str]) -> DispatchStats:
    """One run's stats from the training side's (``parent``, the forwarder among its consumers) and the child's.

    Frames in are the training side's; done are the child's (without its stats: those the forwarder sent);
    unreadable add up; every other frame was dropped (queue full, pipe full, or lost with the child).
    The child's outputs come first, then the training side's own sinks; the forwarder is listed only when
    something went wrong with it, and ``failure`` (the child's end, in words) counts as one of its errors.
    """
    done = child.frames_done if child is not None else forwarder.frames_sent
    unreadable = parent.frames_unreadable + (child.frames_unreadable if child is not None else 0)
    errors = dict(child.errors) if child is not None else {}
    first_errors = dict(child.first_errors) if child is not None else {}
    for name, text in failed_to_open.items():
        errors[name] = errors.get(name, 0) + 1
        first_errors.setdefault(name, f"at start ({text})")
    for name, count in parent.errors.items():
        errors[name] = errors.get(name, 0) + count
        first_errors.setdefault(name, parent.first_errors.get(name, ""))
    if failure is not None:
        errors[Forwarder.name] = errors.get(Forwarder.name, 0) + 1
        first_errors.setdefault(Forwarder.name, failure)
    consumers = list(child.consumers) if child is not None else []
    consumers += [name for name in parent.consumers if name != Forwarder.name]
    if Forwarder.name in errors:
        consumers.append(Forwarder.name)
    first_unreadable = parent.first_unreadable or (child.first_unreadable if child is not None else None)
    return DispatchStats(frames_in=parent.frames_in, frames_dropped=parent.frames_in - unreadable - done,
                         frames_done=done, frames_unreadable=unreadable, consumers=tuple(consumers),
                         errors=errors, first_errors=first_errors, first_unreadable=first_unreadable)
