"""Where each logged step sounds: the one rule that turns step numbers into musical step positions.

By default every logged step is one musical step, in the order logged: the first frame sounds at position
0, the next at 1, and so on, whatever the step numbers are. A run logged every 10 steps (as TensorBoard
and W&B export it) plays without silences, a run whose step numbers restart or jump plays on, and a
step number is only a label: the real numbers travel on in OSC's ``/gradbridge/step``, in the MIDI file's
markers and in an exported CSV.

``keep_gaps=True`` places each step at ``step - first step`` instead, so missing steps sound as silence.
Then the steps must not go back, and two logged steps may be at most ``max_gap_steps`` apart
(``MAX_GAP_STEPS`` by default), so a stray step number cannot ask for days of silence: ``StepError``
names the two steps and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable

from bridge.errors import StepError

__all__ = ["MAX_GAP_STEPS", "StepClock"]

#: With kept gaps, the most steps two consecutive logged steps may be apart (a longer gap is refused).
MAX_GAP_STEPS = 10_000


class StepClock:
    """Musical step positions of logged steps, one step at a time, in the order they were logged.

    Args:
        keep_gaps: ``False`` (default): the n-th step logged sounds at position n. ``True``: at
            ``step - first step``, gaps as silence.
        max_gap_steps: with ``keep_gaps``, the largest gap allowed between two consecutive steps.
    """

    def __init__(self, keep_gaps: bool = False, max_gap_steps: int = MAX_GAP_STEPS) -> None:
        if not isinstance(keep_gaps, bool):
            raise TypeError(f"keep_gaps must be True or False; got {keep_gaps!r}")
        if isinstance(max_gap_steps, bool) or not isinstance(max_gap_steps, int) or max_gap_steps < 1:
            raise ValueError(f"max_gap_steps must be a whole number of steps >= 1; got {max_gap_steps!r}")
        self.keep_gaps = keep_gaps
        self.max_gap_steps = max_gap_steps
        self.reset()

    def reset(self) -> None:
        """Start again: the next step sounds at position 0."""
        self._first: int | None = None
        self._last: int | None = None
        self._count = 0

    @property
    def count(self) -> int:
        """Steps placed so far."""
        return self._count

    @property
    def next_position(self) -> int:
        """With the default rule, the position the next step takes; with kept gaps, one past the last."""
        if not self.keep_gaps or self._last is None or self._first is None:
            return self._count
        return self._last - self._first + 1

    def position(self, step: int) -> int:
        """The musical step position of ``step``, the next step logged; ``StepError`` for a kept gap that
        goes back or is longer than ``max_gap_steps``."""
        if not self.keep_gaps:
            self._count += 1
            return self._count - 1
        if self._first is None or self._last is None:
            self._first = self._last = step
        elif step < self._last:
            raise StepError(f"step {step} comes after step {self._last}: with kept gaps (--keep-gaps) steps "
                            f"must not go back. Fix: leave out --keep-gaps (each logged step then sounds as "
                            f"one step, in the order logged), or sort the steps")
        elif step - self._last > self.max_gap_steps:
            raise StepError(f"steps {self._last} and {step} are {step - self._last} steps apart: with kept gaps "
                            f"(--keep-gaps) a gap may be at most {self.max_gap_steps} steps of silence. Fix: "
                            f"leave out --keep-gaps (each logged step then sounds as one step)")
        self._last = step
        self._count += 1
        return step - self._first

    def positions(self, steps: Iterable[int]) -> list[int]:
        """``position`` of each step in turn."""
        steps = list(steps)
        if not self.keep_gaps:
            start, self._count = self._count, self._count + len(steps)
            return list(range(start, self._count))
        return [self.position(step) for step in steps]
