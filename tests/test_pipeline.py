"""The pipe from frames to sinks: file sinks take blocks of frames, live sinks one frame at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from bridge.dispatch import Delivery
from bridge.events import Arrangement, StepEvents
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.outputs import OutputSpec
from bridge.pipeline import FILE_BLOCK_STEPS, BlockSinkConsumer, SharedMapping, build_outputs

LAYERS = ("conv1", "fc1")


class StepRecorder:
    """A file sink that keeps the step numbers it is sent, and how (one by one or in blocks)."""

    def __init__(self, name: str = "recorder", batched: bool = False) -> None:
        self.name = name
        self.steps: list[int] = []
        self.calls: list[int] = []  # events per call: 1 for send, the block's length for send_many
        self.closed = False
        if batched:
            self.send_many = self._send_many

    def open(self, arrangement: Arrangement) -> None:
        """Nothing to prepare: the recorder only keeps what it is sent."""

    def send(self, events: StepEvents) -> None:
        self.steps.append(events.step)
        self.calls.append(1)

    def _send_many(self, events: Sequence[StepEvents]) -> None:
        self.steps.extend(e.step for e in events)
        self.calls.append(len(events))

    def close(self) -> None:
        self.closed = True


class CountingMapping(Mapping):
    """A mapping that counts the blocks and frames it maps."""

    blocks_mapped = 0
    frames_mapped = 0

    def map_frames(self, frames: Sequence[Frame]) -> list[StepEvents]:
        self.blocks_mapped += 1
        self.frames_mapped += len(frames)
        return super().map_frames(frames)


def frames(count: int, first: int = 0) -> list[Frame]:
    return [Frame(step=first + i, time_s=float(i), norms=np.array([0.1 * (i + 1), 2.0]))
            for i in range(count)]


def test_a_file_sink_gets_full_blocks_then_the_rest_at_close() -> None:
    sink = StepRecorder(batched=True)
    outputs = build_outputs(Mapping.load("pentatonic"), RunInfo(LAYERS, {}), [sink])
    consumer, health = outputs.consumers  # the run's health counts every frame, after the outputs
    assert health is outputs.health
    for frame in frames(150):
        consumer.handle(frame)
    assert sink.calls == [64, 64]  # 150 = 2 full blocks of 64 + 22 waiting
    assert sink.steps == list(range(128))
    consumer.close()
    assert sink.calls == [64, 64, 22]
    assert sink.steps == list(range(150))
    assert sink.closed


def test_a_sink_without_send_many_gets_each_step_in_order() -> None:
    sink = StepRecorder(batched=False)
    outputs = build_outputs(Mapping.load("pentatonic"), RunInfo(LAYERS, {}), [sink])
    stats = Delivery(outputs.consumers).run(frames(70, first=5))
    assert stats.frames_done == 70
    assert sink.calls == [1] * 70
    assert sink.steps == list(range(5, 75))


def test_blocks_give_the_events_mapping_frame_by_frame_gives() -> None:
    sink = StepRecorder(batched=True)
    got: list[StepEvents] = []
    sink.send_many = got.extend  # keep the events themselves
    Delivery(build_outputs(Mapping.load("perone2019"), RunInfo(LAYERS, {}), [sink]).consumers).run(frames(100))
    reference = Mapping.load("perone2019")
    reference.arrange(LAYERS)
    expected = [reference.map_frame(f) for f in frames(100)]
    assert [e.step for e in got] == list(range(100))
    for mine, theirs in zip(got, expected):
        assert mine.start_s == theirs.start_s
        np.testing.assert_array_equal(mine.notes.frequency_hz, theirs.notes.frequency_hz)
        np.testing.assert_array_equal(mine.notes.start_s, theirs.notes.start_s)


def test_file_sinks_share_one_mapping_of_each_block() -> None:
    mapping = CountingMapping(Mapping.load("pentatonic").preset)
    sinks = [StepRecorder("a", batched=True), StepRecorder("b", batched=False)]
    Delivery(build_outputs(mapping, RunInfo(LAYERS, {}), sinks).consumers).run(frames(FILE_BLOCK_STEPS * 2 + 1))
    assert mapping.blocks_mapped == 3  # two full blocks and the one frame left at close, not twice that
    assert mapping.frames_mapped == FILE_BLOCK_STEPS * 2 + 1
    assert sinks[0].steps == sinks[1].steps == list(range(FILE_BLOCK_STEPS * 2 + 1))


def test_live_sinks_still_get_every_frame_as_it_comes() -> None:
    live = StepRecorder("live", batched=True)  # send_many is ignored for live sinks: they sound now
    mapping = Mapping.load("pentatonic")
    rate = OutputSpec(every=1).rate_for(mapping)
    outputs = build_outputs(mapping, RunInfo(LAYERS, {}), [], live_sinks=[live], rate=rate)
    clock, consumer, health = outputs.consumers  # the run's health counts every frame, after the outputs
    assert health is outputs.health and clock.name == "live clock"  # the free clock: each frame as it comes
    for frame in frames(3):
        clock.handle(frame)
        consumer.handle(frame)
    assert live.calls == [1, 1, 1]
    assert live.steps == [0, 1, 2]


def test_ctrl_c_while_reading_frames_still_hands_over_the_waiting_block() -> None:
    sink = StepRecorder(batched=True)

    def interrupted() -> Iterator[Frame]:
        yield from frames(70)
        raise KeyboardInterrupt

    outputs = build_outputs(Mapping.load("pentatonic"), RunInfo(LAYERS, {}), [sink])
    with pytest.raises(KeyboardInterrupt):
        Delivery(outputs.consumers).run(interrupted())
    assert sink.steps == list(range(70))
    assert sink.calls == [64, 6]
    assert sink.closed


def test_a_sink_that_fails_on_a_block_is_still_closed() -> None:
    class Broken(StepRecorder):
        def _send_many(self, events: Sequence[StepEvents]) -> None:
            raise OSError("disk full")

    sink = Broken(batched=True)
    outputs = build_outputs(Mapping.load("pentatonic"), RunInfo(LAYERS, {}), [sink])
    stats = Delivery(outputs.consumers).run(frames(10))
    assert stats.errors == {"recorder": 1}
    assert stats.first_errors["recorder"].startswith("at close (OSError: disk full")
    assert sink.closed


def test_block_size_must_be_a_positive_int() -> None:
    mapping = Mapping.load("pentatonic")
    shared = SharedMapping(mapping, LAYERS)
    with pytest.raises(ValueError, match="block_steps must be an int >= 1"):
        BlockSinkConsumer(StepRecorder(), shared, block_steps=0)
