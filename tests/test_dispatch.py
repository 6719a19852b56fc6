"""Tests for bridge.dispatch: ordered delivery, bounded queue, failure isolation, close."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import numpy as np
import pytest

from bridge.dispatch import DispatchStats, Dispatcher
from bridge.frames import Frame

GUARD_S = 10.0  # only to keep a broken dispatcher from hanging the test run; never asserted as a timing


def frame(step: int) -> Frame:
    return Frame(step=step, time_s=1000.0 + step, norms=np.array([float(step), 2.0 * step]))


class Recorder:
    def __init__(self, name: str = "rec", fail_at: int | None = None, fail_close: bool = False) -> None:
        self.name = name
        self.steps: list[int] = []
        self.threads: set[str] = set()
        self.closed = 0
        self.fail_at = fail_at
        self.fail_close = fail_close

    def handle(self, frame: Frame) -> None:
        self.steps.append(frame.step)
        self.threads.add(threading.current_thread().name)
        if frame.step == self.fail_at:
            raise RuntimeError("boom")

    def close(self) -> None:
        self.closed += 1
        if self.fail_close:
            raise OSError("disk full")


class Gate(Recorder):
    """Holds the dispatcher thread inside its first ``handle`` until released."""

    def __init__(self) -> None:
        super().__init__("slow")
        self.entered = threading.Event()
        self.release = threading.Event()

    def handle(self, frame: Frame) -> None:
        super().handle(frame)
        self.entered.set()
        self.release.wait(GUARD_S)


class Unreadable:
    def resolve(self) -> Frame:
        raise ValueError("device lost")


def test_frames_reach_every_consumer_in_order_on_the_dispatch_thread() -> None:
    a, b = Recorder("a"), Recorder("b")
    dispatcher = Dispatcher([a, b], name="test-dispatch").start()
    accepted = [dispatcher.submit(frame(i)) for i in range(10)]
    stats = dispatcher.close()
    assert accepted == [True] * 10
    assert a.steps == b.steps == list(range(10))
    assert a.threads == b.threads == {"test-dispatch"}
    assert (a.closed, b.closed) == (1, 1)
    assert (stats.frames_in, stats.frames_dropped, stats.frames_done) == (10, 0, 10)
    assert stats.summary() == "10 frames in, 0 dropped; a: ok; b: ok"


def test_failing_consumer_is_reported_once_and_switched_off(caplog: pytest.LogCaptureFixture) -> None:
    bad, good = Recorder("midi-port", fail_at=3), Recorder("wav")
    with caplog.at_level(logging.WARNING, logger="bridge"):
        with Dispatcher([bad, good]) as dispatcher:
            for i in range(8):
                dispatcher.submit(frame(i))
    stats = dispatcher.stats
    assert good.steps == list(range(8))
    assert bad.steps == [0, 1, 2, 3]  # tried up to the failure, skipped after
    assert bad.closed == 1  # still closed, to release what it holds
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "'midi-port'" in message and "RuntimeError: boom" in message and "training goes on" in message
    assert stats.errors == {"midi-port": 1}
    assert stats.first_errors == {"midi-port": "at step 3 (RuntimeError: boom)"}
    assert stats.frames_done == 8
    assert stats.summary() == "8 frames in, 0 dropped; midi-port: failed at step 3 (RuntimeError: boom); wav: ok"


def test_full_queue_drops_and_counts_without_blocking() -> None:
    gate = Gate()
    dispatcher = Dispatcher([gate], queue_size=4).start()
    assert dispatcher.submit(frame(0))
    assert gate.entered.wait(GUARD_S)  # the thread holds frame 0: the queue is empty again
    results: list[bool] = []
    submitter = threading.Thread(target=lambda: results.extend(dispatcher.submit(frame(i)) for i in range(1, 11)))
    submitter.start()
    submitter.join(GUARD_S)
    assert not submitter.is_alive()  # all ten submits returned while the consumer was stuck
    assert results == [True] * 4 + [False] * 6
    gate.release.set()
    stats = dispatcher.close()
    assert gate.steps == [0, 1, 2, 3, 4]
    assert (stats.frames_in, stats.frames_dropped, stats.frames_done) == (11, 6, 5)
    assert stats.frames_dropped == stats.frames_in - len(gate.steps)
    assert stats.summary().startswith("11 frames in, 6 dropped (the outputs fell behind")


def test_close_drains_joins_and_is_idempotent() -> None:
    rec = Recorder()
    dispatcher = Dispatcher([rec], queue_size=64)
    for i in range(50):
        dispatcher.submit(frame(i))
    dispatcher.start()
    first = dispatcher.close(timeout_s=GUARD_S)
    assert rec.steps == list(range(50))
    assert not dispatcher.is_alive
    second = dispatcher.close()
    assert rec.closed == 1
    assert first == second == DispatchStats(50, 0, 50, 0, ("rec",), {}, {}, None)


def test_submit_after_close_is_dropped() -> None:
    rec = Recorder()
    dispatcher = Dispatcher([rec]).start()
    dispatcher.submit(frame(0))
    dispatcher.close()
    assert dispatcher.submit(frame(1)) is False
    assert rec.steps == [0]
    stats = dispatcher.stats
    assert (stats.frames_in, stats.frames_dropped, stats.frames_done) == (2, 1, 1)


def test_close_without_start_serves_what_was_queued() -> None:
    rec = Recorder()
    dispatcher = Dispatcher([rec])
    dispatcher(frame(0))  # callable form, as a capture's on_frame
    dispatcher(frame(1))
    stats = dispatcher.close()
    assert rec.steps == [0, 1] and rec.closed == 1
    assert stats.frames_done == 2
    with pytest.raises(RuntimeError, match="make a new one"):
        dispatcher.start()


def test_failing_close_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    wav, midi = Recorder("wav", fail_close=True), Recorder("midi-file")
    dispatcher = Dispatcher([wav, midi]).start()
    dispatcher.submit(frame(0))
    with caplog.at_level(logging.WARNING, logger="bridge"):
        stats = dispatcher.close()
    assert midi.closed == 1 and wav.closed == 1
    assert [r.getMessage() for r in caplog.records] == [
        "output 'wav' failed at close (OSError: disk full) and is switched off; training goes on"
    ]
    assert stats.summary() == "1 frames in, 0 dropped; wav: failed at close (OSError: disk full); midi-file: ok"


def test_unreadable_frame_is_skipped_and_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder()
    with caplog.at_level(logging.WARNING, logger="bridge"):
        with Dispatcher([rec]) as dispatcher:
            dispatcher.submit(frame(0))
            dispatcher.submit(Unreadable())
            dispatcher.submit(Unreadable())
            dispatcher.submit(frame(3))
    stats = dispatcher.stats
    assert rec.steps == [0, 3]
    assert (stats.frames_in, stats.frames_done, stats.frames_unreadable) == (4, 2, 2)
    assert len(caplog.records) == 1 and "device lost" in caplog.records[0].getMessage()
    assert stats.summary() == "4 frames in, 0 dropped; 2 unreadable (ValueError: device lost); rec: ok"


def test_run_sync_drives_consumers_on_the_caller_thread() -> None:
    bad, good = Recorder("osc", fail_at=1), Recorder("wav")
    stats = Dispatcher([bad, good]).run_sync(frame(i) for i in range(4))
    assert good.steps == [0, 1, 2, 3] and bad.steps == [0, 1]
    assert good.threads == {threading.current_thread().name}
    assert (good.closed, bad.closed) == (1, 1)
    assert stats.summary() == "4 frames in, 0 dropped; osc: failed at step 1 (RuntimeError: boom); wav: ok"


def test_run_sync_needs_a_fresh_dispatcher() -> None:
    dispatcher = Dispatcher([Recorder()]).start()
    with pytest.raises(RuntimeError, match="fresh dispatcher"):
        dispatcher.run_sync([frame(0)])
    dispatcher.close()


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="'rec' appears twice"):
        Dispatcher([Recorder(), Recorder()])
    with pytest.raises(TypeError, match=r"needs a str `name`, `handle\(frame\)` and `close\(\)`; got int"):
        Dispatcher([3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="sequence of consumers"):
        Dispatcher(Recorder())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="queue_size must be >= 1 .*got 0"):
        Dispatcher([Recorder()], queue_size=0)


def test_dispatch_does_not_import_torch() -> None:
    code = "import sys, bridge.dispatch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
