"""The follower process ``bridge.watch`` starts: ``python -m bridge.follower_process`` (no torch).

It reads its setup from stdin (``bridge.wire``), opens the outputs, follows the run log until the training
process closes it (or is gone: stdin ends, whatever ended it, ``kill -9`` included), finishes every output
and reports on stdout. SIGTERM and SIGINT make it deliver what the log holds, finish and report; a second
one stops at once, still finishing the files with what they have.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from typing import Any, BinaryIO, TextIO

from bridge.follower import Follower
from bridge.mapping import Mapping
from bridge.outputs import open_outputs, page_of
from bridge.tail import FileTail
from bridge.wire import LENGTH, FollowerSetup, report_to_dict

log = logging.getLogger("bridge")


def _say(protocol: TextIO, message: dict[str, Any]) -> None:
    try:
        protocol.write(json.dumps(message) + "\n")
        protocol.flush()
    except OSError as exc:  # the training process is gone (kill -9); the files are finished all the same
        log.warning("could not report to the training process (%s)", exc)


def _read_exactly(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _pipe_ended(fd: int) -> bool:
    """True once the training process's end of the pipe is closed (it sends nothing else)."""
    import select

    if not select.select([fd], [], [], 0)[0]:
        return False
    try:
        return os.read(fd, 4096) == b""
    except OSError:
        return True


def stop_on_signals(stop: threading.Event, received: list[int] | None = None) -> None:
    """SIGTERM and SIGINT set ``stop`` (deliver what the log holds, then finish); a second one raises
    ``KeyboardInterrupt`` (finish the files with what they have, at once). ``received`` gets each signal's
    number."""

    def handler(signum: int, frame: object) -> None:
        if received is not None:
            received.append(signum)
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("signal %d: delivering what the run log holds, then finishing", signum)
        stop.set()

    for name in ("SIGTERM", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), handler)


def serve(stream: BinaryIO, protocol: TextIO) -> int:
    """Read the setup from ``stream``, open the outputs, follow the run log to its end; 0 on success."""
    fd = stream.fileno()
    head = _read_exactly(fd, LENGTH.size)
    body = None if head is None else _read_exactly(fd, LENGTH.unpack(head)[0])
    if body is None:
        _say(protocol, {"ready": False, "error": "stdin ended before the setup record", "kind": ""})
        return 1
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        setup = FollowerSetup.from_json(body)
        tail = FileTail(setup.run_log)
        mapping = Mapping(setup.preset)
        outputs = open_outputs(setup.outputs, mapping, tail.info, run_name=os.path.basename(setup.run_log))
    except Exception as exc:  # reported to the training process, which raises it before training starts
        base = "TypeError" if isinstance(exc, TypeError) else "ValueError" if isinstance(exc, ValueError) else ""
        _say(protocol, {"ready": False, "error": str(exc), "kind": base, "type": type(exc).__name__})
        return 1
    page = page_of(outputs)
    _say(protocol, {"ready": True, "description": outputs.arrangement.description,
                    "failed_to_open": outputs.failed_to_open, "page_url": None if page is None else page.url,
                    "clock_origin_s": outputs.live.origin_s if outputs.live is not None else None})
    follower = Follower(tail, outputs, stop=stop, writer_gone=lambda: _pipe_ended(fd), wake_fds=(fd,),
                        progress=lambda done, left: _say(protocol, {"progress": done, "left": left}))
    report = follower.run()
    _say(protocol, {"report": report_to_dict(report)})
    return 0


def main() -> int:
    """Entry point: the protocol goes on the real stdout; anything else printed goes to stderr."""
    logging.basicConfig(level=logging.WARNING, format="gradbridge: %(message)s")
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints (C libraries too) cannot corrupt it
    sys.stdout = sys.stderr
    return serve(sys.stdin.buffer, protocol)


if __name__ == "__main__":
    sys.exit(main())
