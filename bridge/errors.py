"""The errors gradbridge raises for bad input; each message says what is wrong and how to fix it."""

from __future__ import annotations


class GradbridgeError(Exception):
    """Base class of every error gradbridge raises on purpose."""


class PresetError(GradbridgeError, ValueError):
    """A mapping preset could not be loaded: unreadable file, unknown key, wrong type or bad value."""


class RunLogError(GradbridgeError, ValueError):
    """A run log or CSV of norms could not be read."""


class SinkError(GradbridgeError, RuntimeError):
    """A sink (MIDI port, OSC receiver, audio device, file) could not be opened or written."""
