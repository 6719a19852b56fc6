"""What a page opened mid-run gets for its plots: the frames so far, thinned evenly once there are many.

``FrameHistory`` keeps every frame up to ``capacity``; past that it keeps every 2nd (then 4th, 8th, ...)
step, and besides those every frame with a NaN or infinite norm (an alarm is never thinned away until alarms
alone fill the history, which then thins them too). Memory stays bounded by ``capacity`` records however
long the run (20 000 records of 128 layers: 11 MB). ``SoundHistory`` keeps the last sound messages, for the
piano roll; ``SpikeHistory`` the spike alarms sounded (the first ``SPIKE_HISTORY``), for the plots.
"""

from __future__ import annotations

import collections

import numpy as np

from bridge.serve.protocol import SPIKE_MARK

#: Frames a history holds before it thins.
HISTORY_FRAMES = 20_000
#: Sound messages kept for the piano roll of a page that connects.
SOUND_HISTORY = 256
#: Spike alarms kept for the plots of a page that connects (16 bytes each): the first ones, as the page keeps
#: its first 10 000 NaN/Inf alarms.
SPIKE_HISTORY = 10_000


class FrameHistory:
    """The run's frames as run log records, thinned by stride past ``capacity`` (alarms kept).

    Args:
        capacity: records held at most (>= 2).
    """

    def __init__(self, capacity: int = HISTORY_FRAMES) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 2:
            raise ValueError(f"capacity must be an int >= 2 (records), got {capacity!r}")
        self.capacity = capacity
        self.stride = 1  #: keep one step in ``stride`` (and every alarm)
        self.frames_seen = 0
        self._records: list[tuple[int, bytes, bool]] = []  # (position in the run, record, has an alarm)

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: bytes, alarm: bool) -> None:
        """Take the next frame's record; ``alarm``: it holds a NaN or infinite norm."""
        position = self.frames_seen
        self.frames_seen += 1
        if position % self.stride and not alarm:
            return
        self._records.append((position, record, alarm))
        while len(self._records) > self.capacity:
            self._thin()

    def records(self) -> list[bytes]:
        """The records held, in step order."""
        return [record for _, record, _ in self._records]

    def _thin(self) -> None:
        self.stride *= 2
        kept = [item for item in self._records if item[0] % self.stride == 0 or item[2]]
        if len(kept) > self.capacity:  # alarms alone overflow: thin them by position too
            kept = [item for item in kept if item[0] % self.stride == 0]
        self._records = kept


class SoundHistory:
    """The last ``size`` sound messages (bytes), oldest first."""

    def __init__(self, size: int = SOUND_HISTORY) -> None:
        self._messages: collections.deque[bytes] = collections.deque(maxlen=size)

    def add(self, message: bytes) -> None:
        self._messages.append(message)

    def messages(self) -> list[bytes]:
        return list(self._messages)


class SpikeHistory:
    """The spike alarms sounded so far, as ``SPIKE_MARK`` rows (step, layer, ratio): the first ``size``."""

    def __init__(self, size: int = SPIKE_HISTORY) -> None:
        self.size = size
        self.seen = 0  #: spike alarms sounded, also those past ``size``
        self._marks: list[np.ndarray] = []
        self._held = 0

    def __len__(self) -> int:
        return self._held

    def add(self, marks: np.ndarray) -> None:
        """Take one step's marks (``SPIKE_MARK`` rows)."""
        self.seen += len(marks)
        room = self.size - self._held
        if room > 0 and len(marks):
            kept = marks[:room]
            self._marks.append(kept)
            self._held += len(kept)

    def marks(self) -> np.ndarray:
        """The marks held, in the order they sounded."""
        return np.concatenate(self._marks) if self._marks else np.zeros(0, dtype=SPIKE_MARK)
