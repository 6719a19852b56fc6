"""SIGTERM, as SLURM, Kubernetes and ``timeout`` send it, ending a watched run like Ctrl-C does.

Python's default for SIGTERM is to die at once: no ``finally``, no ``atexit``, a MIDI file left empty.
While a watch is open, ``SigtermGuard`` turns SIGTERM into ``SystemExit(143)`` (128 + 15, the status a
shell reports for it), so the ``with`` block ends and the watch closes as it does on Ctrl-C. While the
watch finishes, another SIGTERM is noted and ignored, so the files still get finished. A handler someone
else installed (a framework's own) is left as it is. Only the main thread can install handlers; elsewhere
nothing changes.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

#: The exit status of a run ended by SIGTERM.
SIGTERM_EXIT_STATUS = 128 + 15


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    print("gradbridge: SIGTERM received; finishing the outputs", file=sys.stderr)
    raise SystemExit(SIGTERM_EXIT_STATUS)


def _while_finishing(signum: int, frame: FrameType | None) -> None:
    print("gradbridge: SIGTERM received while finishing the outputs; finishing them first", file=sys.stderr)


class SigtermGuard:
    """One open watch's hold on the SIGTERM handler; ``release()`` when the watch has closed."""

    _holders = 0

    def __init__(self) -> None:
        self._held = True

    @classmethod
    def install(cls) -> "SigtermGuard | None":
        """Turn SIGTERM into ``SystemExit(143)`` unless another handler is set; ``None`` when nothing was done."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
            return None
        current = signal.getsignal(signal.SIGTERM)
        if current not in (signal.SIG_DFL, _raise_exit, _while_finishing):
            return None
        signal.signal(signal.SIGTERM, _raise_exit)
        cls._holders += 1
        return cls()

    def finishing(self) -> None:
        """The watch is closing: a SIGTERM now must not interrupt it."""
        if self._held and signal.getsignal(signal.SIGTERM) is _raise_exit and _on_main_thread():
            signal.signal(signal.SIGTERM, _while_finishing)

    def release(self) -> None:
        """The watch has closed; the last one to close gives SIGTERM its default back. Idempotent."""
        if not self._held:
            return
        self._held = False
        SigtermGuard._holders -= 1
        if not _on_main_thread():
            return
        current = signal.getsignal(signal.SIGTERM)
        if SigtermGuard._holders == 0 and current in (_raise_exit, _while_finishing):
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        elif SigtermGuard._holders > 0 and current is _while_finishing:
            signal.signal(signal.SIGTERM, _raise_exit)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
