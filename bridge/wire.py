"""What crosses between the training process and the follower process it starts (``bridge.follower_process``).

On the follower's stdin, once: a 4-byte little-endian length, then that many bytes of UTF-8 JSON, the
``FollowerSetup`` (the run log's path, the preset's fields, the outputs). The pipe then stays open and
carries nothing: its end tells the follower that the training process is gone, however it ended.

On the follower's stdout, one line of JSON when the outputs are open (``{"ready": true, "description": ...,
"failed_to_open": {name: text}, "page_url": the page's address or null}``, or ``{"ready": false, "error": text,
"kind": "TypeError" | "ValueError" | "", "type": the error's class name}``, raised again in the training process
as the same class when it is one of ``bridge.errors``); once the training process is done, about one a second
while it finishes (``{"progress": frames delivered, "left": frames left or null}``), and one when it is done
(``{"report": {...}}``, a ``FollowReport``). Nothing else, so the pipe never fills while training runs. Its
messages go to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import dataclass
from typing import Any

from bridge.dispatch import DispatchStats
from bridge.follower import FollowReport
from bridge.outputs import OutputSpec
from bridge.presets import Preset

LENGTH = struct.Struct("<I")


def preset_to_dict(preset: Preset) -> dict[str, Any]:
    """The preset's fields as JSON-ready values (tuples become lists)."""
    return dataclasses.asdict(preset)


def preset_from_dict(values: dict[str, Any]) -> Preset:
    """The ``Preset`` written by ``preset_to_dict`` (lists become tuples again)."""
    return Preset(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})


@dataclass(frozen=True)
class FollowerSetup:
    """Everything a follower process needs: the log to follow, the preset, the outputs to open."""

    run_log: str
    preset: Preset
    outputs: OutputSpec

    def to_bytes(self) -> bytes:
        """The setup record: length, then JSON."""
        body = json.dumps({"run_log": self.run_log, "preset": preset_to_dict(self.preset),
                           "outputs": self.outputs.to_dict()}).encode("utf-8")
        return LENGTH.pack(len(body)) + body

    @classmethod
    def from_json(cls, body: bytes) -> "FollowerSetup":
        """The setup from the JSON part of its record."""
        values = json.loads(body.decode("utf-8"))
        return cls(str(values["run_log"]), preset_from_dict(values["preset"]),
                   OutputSpec.from_dict(values["outputs"]))


def report_to_dict(report: FollowReport) -> dict[str, Any]:
    """The report as JSON-ready values."""
    return dataclasses.asdict(report)


def report_from_dict(values: dict[str, Any]) -> FollowReport:
    """The ``FollowReport`` written by ``report_to_dict``."""
    stats = values.pop("stats")
    stats = DispatchStats(**{**stats, "consumers": tuple(stats["consumers"])})
    return FollowReport(stats=stats, **values)
