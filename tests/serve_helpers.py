"""Shared by the page server's tests: runs written by hand, a follower serving them on a thread, and a
WebSocket client (aiohttp's) that collects what the server sends."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridge.follower import Follower, FollowReport
from bridge.frames import Frame, RunInfo
from bridge.mapping import Mapping
from bridge.outputs import OutputSpec, open_outputs, page_of
from bridge.recordformat import record_bytes
from bridge.runlog import RunLogWriter
from bridge.serve.output import PageOutput
from bridge.tail import FileTail

TIMEOUT_S = 30.0


def norms_of(step: int, layers: int) -> list[float]:
    """A stand-in run's norms: each layer its own slow wave, a NaN in layer 1 at step 7."""
    out = [0.2 * (i + 1) * (1.5 + math.sin(step / 5 + i)) for i in range(layers)]
    if step == 7 and layers > 1:
        out[1] = math.nan
    return out


def write_run(path: Path, steps: int, layers: int = 3, mapping: str = "pentatonic") -> list[Frame]:
    """A finished run log of ``steps`` frames; returns the frames as written."""
    frames = [Frame(s, 1_700_000_000.0 + s, norms_of(s, layers), loss=1.0 / (s + 1), lr=0.01) for s in range(steps)]
    with RunLogWriter(path, RunInfo(tuple(f"layer{i}" for i in range(layers)), {"mapping": mapping})) as writer:
        for frame in frames:
            writer.append(frame)
    return frames


@dataclass
class Served:
    """A follower serving a run log on a thread: its page output and, once done, its report."""

    page: PageOutput
    thread: threading.Thread
    report: list[FollowReport] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.page.server.port

    @property
    def token(self) -> str:
        return self.page.server.token

    def join(self) -> FollowReport:
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive(), "the follower did not finish"
        return self.report[0]


def serve_run(path: Path, *, linger: bool = True, spec: OutputSpec | None = None) -> Served:
    """Follow ``path`` from its start with a page on a free port, on a thread (the server lingers after the run
    ends unless ``linger=False``; call ``page.stop()``)."""
    tail = FileTail(path)
    mapping = Mapping.load(tail.info.metadata.get("mapping", "pentatonic"))
    outputs = open_outputs(spec or OutputSpec(serve=0), mapping, tail.info)
    page = page_of(outputs)
    assert page is not None, outputs.failed_to_open
    page.linger = linger
    served = Served(page, threading.Thread(target=lambda: None))
    served.thread = threading.Thread(target=lambda: served.report.append(Follower(tail, outputs).run()), daemon=True)
    served.thread.start()
    return served


def records_of(message: bytes, layers: int) -> list[bytes]:
    """The run log records in a FRAMES message."""
    size = record_bytes(layers)
    body = message[4:]
    return [body[i:i + size] for i in range(0, len(body), size)]


@dataclass
class Collected:
    hello: dict[str, Any]
    texts: list[dict[str, Any]]
    records: list[bytes]
    sounds: list[bytes]


async def collect(port: int, token: str, *, until_end: bool = True, timeout_s: float = TIMEOUT_S,
                  layers: int = 3) -> Collected:
    """Connect to the WebSocket and gather everything until the ``end`` message (or the timeout)."""
    import aiohttp

    hello: dict[str, Any] = {}
    texts, records, sounds = [], [], []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"http://127.0.0.1:{port}/ws?token={token}") as ws:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    message = await ws.receive(timeout=max(0.05, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                if message.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(message.data)
                    texts.append(data)
                    if data["type"] == "hello":
                        hello = data
                    if data["type"] == "end" and until_end:
                        break
                elif message.type == aiohttp.WSMsgType.BINARY:
                    kind = message.data[0]
                    if kind == 1:
                        records += records_of(message.data, layers)
                    else:
                        sounds.append(message.data)
                else:
                    break
    return Collected(hello, texts, records, sounds)


def float32(values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)
