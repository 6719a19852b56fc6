"""Tests for bridge.dispatch: ordered delivery, failure isolation, close, and the stats in words."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from bridge.dispatch import Delivery, DispatchStats
from bridge.frames import Frame


def frame(step: int) -> Frame:
    return Frame(step=step, time_s=1000.0 + step, norms=np.array([float(step), 2.0 * step]))


class Recorder:
    def __init__(self, name: str = "rec", fail_at: int | None = None, fail_close: bool = False) -> None:
        self.name = name
        self.steps: list[int] = []
        self.closed = 0
        self.fail_at = fail_at
        self.fail_close = fail_close

    def handle(self, frame: Frame) -> None:
        self.steps.append(frame.step)
        if frame.step == self.fail_at:
            raise RuntimeError("boom")

    def close(self) -> None:
        self.closed += 1
        if self.fail_close:
            raise OSError("disk full")


def test_frames_reach_every_consumer_in_order() -> None:
    a, b = Recorder("a"), Recorder("b")
    stats = Delivery([a, b]).run(frame(i) for i in range(10))
    assert a.steps == b.steps == list(range(10))
    assert (a.closed, b.closed) == (1, 1)
    assert (stats.frames_in, stats.frames_dropped, stats.frames_done) == (10, 0, 10)
    assert stats.summary() == "10 frames in, 0 dropped; a: ok; b: ok"


def test_failing_consumer_is_reported_once_and_switched_off(caplog: pytest.LogCaptureFixture) -> None:
    bad, good = Recorder("midi-port", fail_at=3), Recorder("wav")
    delivery = Delivery([bad, good])
    with caplog.at_level(logging.WARNING, logger="bridge"):
        for i in range(8):
            delivery.deliver(frame(i))
        assert delivery.live_consumers == 1
        stats = delivery.close()
    assert good.steps == list(range(8))
    assert bad.steps == [0, 1, 2, 3]  # tried up to the failure, skipped after
    assert bad.closed == 1  # still closed, to release what it holds
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "'midi-port'" in message and "RuntimeError: boom" in message and "the others go on" in message
    assert stats.errors == {"midi-port": 1}
    assert stats.first_errors == {"midi-port": "at step 3 (RuntimeError: boom)"}
    assert stats.missed == {"midi-port": 5}  # steps 3 to 7
    assert stats.summary() == ("8 frames in, 0 dropped; midi-port: failed at step 3 (RuntimeError: boom), 5 frame(s) "
                               "missed; wav: ok")


def test_close_is_idempotent_and_a_closed_delivery_refuses_frames() -> None:
    rec = Recorder()
    delivery = Delivery([rec])
    delivery.deliver(frame(0))
    first, second = delivery.close(), delivery.close()
    assert rec.closed == 1
    assert first == second == DispatchStats(1, 0, 1, 0, ("rec",), {}, {}, None, {}, [])
    with pytest.raises(RuntimeError, match="make a new one"):
        delivery.deliver(frame(1))


def test_failing_close_is_isolated(caplog: pytest.LogCaptureFixture) -> None:
    wav, midi = Recorder("wav", fail_close=True), Recorder("midi-file")
    delivery = Delivery([wav, midi])
    delivery.deliver(frame(0))
    with caplog.at_level(logging.WARNING, logger="bridge"):
        stats = delivery.close()
    assert midi.closed == 1 and wav.closed == 1
    assert [r.getMessage() for r in caplog.records] == [
        "output 'wav' failed at close (OSError: disk full) and is switched off; the others go on"
    ]
    assert stats.summary() == "1 frames in, 0 dropped; wav: failed at close (OSError: disk full); midi-file: ok"


def test_ctrl_c_while_reading_frames_still_closes_every_consumer() -> None:
    rec = Recorder()

    def frames() -> Iterator[Frame]:
        yield frame(0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Delivery([rec]).run(frames())
    assert rec.steps == [0] and rec.closed == 1


def test_summary_lists_unreadable_records_failures_added_later_and_remarks() -> None:
    stats = DispatchStats(frames_in=5, frames_done=4, frames_unreadable=1, consumers=("wav",),
                          first_unreadable="run log x: 1 damaged record skipped (44 bytes from byte 100)")
    stats.add_error("midi", "at start (SinkError: no port named 'x')")
    stats.remarks.append("the outputs finished 2.0 s after training (40 frames behind)")
    assert stats.summary() == ("5 frames in, 0 dropped; 1 unreadable (run log x: 1 damaged record skipped (44 bytes "
                               "from byte 100)); wav: ok; midi: failed at start (SinkError: no port named 'x'); "
                               "the outputs finished 2.0 s after training (40 frames behind)")


def test_argument_errors() -> None:
    with pytest.raises(ValueError, match="'rec' appears twice"):
        Delivery([Recorder(), Recorder()])
    with pytest.raises(TypeError, match=r"needs a str `name`, `handle\(frame\)` and `close\(\)`; got int"):
        Delivery([3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="sequence of consumers"):
        Delivery(Recorder())  # type: ignore[arg-type]


def test_dispatch_does_not_import_torch() -> None:
    code = "import sys, bridge.dispatch; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
