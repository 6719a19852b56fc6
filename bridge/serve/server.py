"""The page's HTTP and WebSocket server (aiohttp), on a thread of its own with its own asyncio loop.

The follower's thread hands it frames and sound messages through ``push_frame``/``push_sound``/``push_end``,
which only append to a queue: the follower never waits for the server, nor for any page. On the server's
loop, every 20 ms, new frames go into the history and, as one message, into each page's queue.

Each page has its own queue, so a slow or stalled page never holds up the follower or the other pages:
- frames (the plots) wait in order and catch up; a page more than ``MAX_CLIENT_BYTES`` behind is disconnected
  (close code 1013, "try again later"): it reconnects by itself and starts again from the history;
- sound keeps only the latest ``SOUND_QUEUE`` steps (older ones were due already) and goes before frames.

Every request, the WebSocket included, needs the token (``bridge.serve.routes``), on loopback too. Nothing a
page sends is read beyond the WebSocket's own pings and close: the server is read-only.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, web

from bridge.errors import SinkError
from bridge.serve import check_token, is_loopback, new_token
import numpy as np

from bridge.serve.history import FrameHistory, SoundHistory, SpikeHistory
from bridge.serve.protocol import SOUND_PAST, SPIKE_MARK, frames_message, spikes_message
from bridge.serve.routes import StaticFiles, token_check

log = logging.getLogger("bridge")

_RECORD_HEAD = struct.Struct("<4sqd")  # a run log record's mark, step and capture time

#: How often new frames go out, seconds.
TICK_S = 0.02
#: How often each page hears the server's status, seconds.
STATUS_S = 0.5
#: Bytes of frames a page may have waiting before it is disconnected (it reconnects from the history).
MAX_CLIENT_BYTES = 32 * 1024 * 1024
#: Each page's socket send buffer, bytes (the kernel doubles it): bounds what the kernel holds for a page, which
#: its own growth would take to 4 MiB or more; on loopback (where an SSH tunnel ends) it costs no speed.
SEND_BUFFER_BYTES = 256 * 1024
#: Sound steps kept for a page that reads slowly: the latest.
SOUND_QUEUE = 8
#: Largest frames message, bytes (a longer batch is split at record boundaries).
MAX_MESSAGE_BYTES = 1 << 20
#: WebSocket ping interval (a page that stops answering is closed after it), and close handshake limit, s.
HEARTBEAT_S, CLOSE_S = 20.0, 2.0
#: How long stopping waits for pages to take what is queued for them, seconds.
FLUSH_S = 2.0


@dataclass
class ServerStats:
    """What the server did: pages connected, dropped for being too slow, frames and sound steps sent out."""

    clients_now: int = 0
    clients_total: int = 0
    clients_dropped: int = 0
    frames: int = 0
    sound_steps: int = 0
    sound_dropped: int = 0  #: sound steps a slow page missed (newer ones replaced them)


class _Client:
    """One connected page: its WebSocket and its own queues."""

    def __init__(self, ws: web.WebSocketResponse, number: int) -> None:
        self.ws = ws
        self.number = number
        self.stream: collections.deque[bytes | str] = collections.deque()  # frames, then the end, in order
        self.stream_bytes = 0
        self.sound: collections.deque[bytes] = collections.deque(maxlen=SOUND_QUEUE)
        self.status: str | None = None
        self.wake = asyncio.Event()
        self.dropping = False

    @property
    def idle(self) -> bool:
        return not (self.stream or self.sound or self.status)


class PageServer:
    """Serves the page, its static files and the WebSocket stream of one run.

    Args:
        host: address to listen on (``"127.0.0.1"``: this machine only).
        port: TCP port (0: any free one; ``url`` tells which).
        token: the token every request needs (``None``: a fresh random one).
        max_client_bytes: frames a page may have waiting before it is disconnected.
    """

    def __init__(self, host: str, port: int, token: str | None = None, *,
                 max_client_bytes: int = MAX_CLIENT_BYTES) -> None:
        self.host, self.port = host, port
        self.token = new_token() if token is None else check_token(token)
        self.max_client_bytes = max_client_bytes
        self.stats = ServerStats()
        self.history = FrameHistory()
        self.sound_history = SoundHistory()
        self.spike_history = SpikeHistory()
        self._hello: dict[str, Any] = {}
        self._frames: collections.deque[tuple[bytes, bool]] = collections.deque()
        self._sounds: collections.deque[tuple[bytes, np.ndarray | None]] = collections.deque()
        self._ended: dict[str, Any] | None = None
        self._end_sent = False
        self._wake_pending = False
        self._clients: set[_Client] = set()
        self._latest: tuple[int, float] | None = None  # last frame's step and capture time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        """The page's address, token included."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"

    # -- the follower's side: never waits ------------------------------------------------------------------

    def start(self, hello: dict[str, Any]) -> None:
        """Listen (on a thread of its own) and serve; ``hello`` is what each page hears first.

        Raises ``SinkError`` when it cannot listen (the port taken, the address not this machine's).
        """
        self._hello = dict(hello)
        loop = self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # handed to start(), on the caller's thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="gradbridge-page-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            exc = failure[0]
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SinkError(f"cannot serve the page on {self.host}:{self.port}: {reason}. Fix: pick another port "
                            f"(--port 0 picks a free one) or another --host") from exc
        if not is_loopback(self.host):
            log.warning("serving on %s: anyone who can reach this machine on port %d and has the token can listen to "
                        "the run, and the token travels unencrypted (plain HTTP). Safer: serve on 127.0.0.1 (the "
                        "default) and reach it through an SSH tunnel (ssh -N -L %d:127.0.0.1:%d HOST)",
                        self.host, self.port, self.port, self.port)

    def push_frame(self, record: bytes, alarm: bool) -> None:
        """Hand over one frame as its run log record; ``alarm``: it holds a NaN or infinite norm."""
        self._frames.append((record, alarm))

    def push_sound(self, message: bytes, spikes: np.ndarray | None = None) -> None:
        """Hand over one ``SOUND`` message, and its step's spike alarms as ``SPIKE_MARK`` rows (for pages that
        connect later); pages get it at once."""
        self._sounds.append((message, spikes))
        self._wake()

    def push_end(self, frames: int) -> None:
        """The run ended after ``frames`` frames: pages are told once they have every frame."""
        self._ended = {"type": "end", "frames": frames}
        self._wake()

    def stop(self) -> None:
        """Let pages take what is queued for them (at most ``FLUSH_S``), close them, stop listening. Idempotent."""
        loop, thread = self._loop, self._thread
        if self._stopped or loop is None or thread is None or not thread.is_alive():
            return
        self._stopped = True
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=FLUSH_S + 10 * CLOSE_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10.0)

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None and not self._wake_pending and not self._stopped:
            self._wake_pending = True
            try:
                loop.call_soon_threadsafe(self._distribute)
            except RuntimeError:  # the loop is closed: the server stopped, nothing to tell
                self._wake_pending = False

    # -- the server's loop --------------------------------------------------------------------------------

    async def _open(self) -> None:
        app = web.Application(middlewares=[token_check(self.token)], client_max_size=64 * 1024)
        files = StaticFiles(self.token)
        app.router.add_get("/", files.index)
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/static/{name}", files.file)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=CLOSE_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._ticker = asyncio.get_running_loop().create_task(self._ticks())

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False, heartbeat=HEARTBEAT_S, timeout=CLOSE_S, max_msg_size=4096)
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        await ws.prepare(request)
        self._distribute()  # what arrived before this page goes into the history first
        self.stats.clients_total += 1
        client = _Client(ws, self.stats.clients_total)
        hello = dict(self._hello, server_time_s=time.time(), history_frames=len(self.history),
                     history_stride=self.history.stride, frames_seen=self.history.frames_seen)
        opening: list[bytes | str] = [json.dumps(hello)]
        opening += _chunks(self.history.records())
        if len(self.spike_history):
            opening.append(spikes_message(self.spike_history.marks()))
        opening += self.sound_history.messages()
        if self._end_sent and self._ended is not None:
            opening.append(json.dumps(self._ended))
        self._clients.add(client)
        self.stats.clients_now = len(self._clients)
        sender = asyncio.get_running_loop().create_task(self._send(client, opening))
        try:
            async for _ in ws:  # read-only: whatever a page sends is ignored
                pass
        finally:
            self._clients.discard(client)
            self.stats.clients_now = len(self._clients)
            sender.cancel()
        return ws

    async def _send(self, client: _Client, opening: list[bytes | str]) -> None:
        ws = client.ws
        try:
            for item in opening:
                await _put(ws, item)
            while not ws.closed:
                await client.wake.wait()
                client.wake.clear()
                while not ws.closed:
                    if client.sound:
                        await ws.send_bytes(client.sound.popleft())
                    elif client.status is not None:
                        status, client.status = client.status, None
                        await ws.send_str(status)
                    elif client.stream:
                        item = client.stream.popleft()
                        client.stream_bytes -= len(item)
                        await _put(ws, item)
                    else:
                        break
        except (ConnectionError, RuntimeError) as exc:  # the page went away while we wrote: its handler ends
            log.debug("page %d: %s", client.number, exc)

    async def _ticks(self) -> None:
        said = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            self._distribute()
            now = time.monotonic()
            if now - said >= STATUS_S:
                said = now
                self._send_status()

    def _distribute(self) -> None:
        """Move what the follower handed over into the history and every page's queues."""
        self._wake_pending = False
        records = []
        while self._frames:
            record, alarm = self._frames.popleft()
            self.history.add(record, alarm)
            records.append(record)
            self.stats.frames += 1
        if records:
            self._latest = _step_and_time(records[-1])
            chunks = _chunks(records)
            for client in list(self._clients):
                self._queue_frames(client, chunks)
        while self._sounds:
            message, spikes = self._sounds.popleft()
            if spikes is not None and len(spikes):
                self.spike_history.add(spikes.astype(SPIKE_MARK, copy=False))
            self.stats.sound_steps += 1
            self.sound_history.add(bytes((SOUND_PAST,)) + message[1:])
            for client in self._clients:
                if len(client.sound) == client.sound.maxlen:
                    self.stats.sound_dropped += 1
                client.sound.append(message)
                client.wake.set()
        if self._ended is not None and not self._end_sent and not self._frames:
            self._end_sent = True
            text = json.dumps(self._ended)
            for client in self._clients:
                client.stream.append(text)
                client.wake.set()

    def _queue_frames(self, client: _Client, chunks: list[bytes]) -> None:
        if client.dropping:
            return
        for chunk in chunks:
            client.stream.append(chunk)
            client.stream_bytes += len(chunk)
        client.wake.set()
        if client.stream_bytes > self.max_client_bytes:
            client.dropping = True
            self.stats.clients_dropped += 1
            log.warning("page %d fell %.0f MiB of frames behind and was disconnected; it reconnects by itself and "
                        "starts again from the history", client.number, client.stream_bytes / 2**20)
            client.stream.clear()
            client.stream_bytes = 0
            asyncio.get_running_loop().create_task(self._drop(client))

    async def _drop(self, client: _Client) -> None:
        try:
            await asyncio.wait_for(client.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too slow"), CLOSE_S)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError) as exc:  # closed all the same (transport)
            log.debug("page %d: closing: %r", client.number, exc)
        self._clients.discard(client)
        self.stats.clients_now = len(self._clients)

    def _send_status(self) -> None:
        step, captured = self._latest if self._latest is not None else (None, None)
        status = json.dumps({"type": "status", "server_time_s": time.time(), "frames": self.history.frames_seen,
                             "last_step": step, "last_capture_s": captured, "pages": len(self._clients),
                             "sound_steps": self.stats.sound_steps, "ended": self._end_sent})
        for client in self._clients:
            client.status = status
            client.wake.set()

    async def _shutdown(self) -> None:
        self._distribute()
        deadline = time.monotonic() + FLUSH_S
        while any(not c.idle for c in self._clients) and time.monotonic() < deadline:
            await asyncio.sleep(TICK_S)
        for client in list(self._clients):
            try:
                await asyncio.wait_for(client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopped"),
                                       CLOSE_S)
            except (asyncio.TimeoutError, ConnectionError, RuntimeError) as exc:
                log.debug("page %d: closing: %r", client.number, exc)
        if self._ticker is not None:
            self._ticker.cancel()
        if self._runner is not None:
            await self._runner.cleanup()


def _chunks(records: list[bytes]) -> list[bytes]:
    """``FRAMES`` messages of at most ``MAX_MESSAGE_BYTES`` each, whole records in each."""
    if not records:
        return []
    per = max(1, MAX_MESSAGE_BYTES // len(records[0]))
    return [frames_message(records[i:i + per]) for i in range(0, len(records), per)]


def _step_and_time(record: bytes) -> tuple[int, float]:
    _, step, captured = _RECORD_HEAD.unpack_from(record)
    return int(step), float(captured)


async def _put(ws: web.WebSocketResponse, item: bytes | str) -> None:
    if isinstance(item, str):
        await ws.send_str(item)
    else:
        await ws.send_bytes(item)


__all__ = ["PageServer", "ServerStats", "check_token", "is_loopback", "new_token"]
