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


class StepError(GradbridgeError, ValueError):
    """A run's steps cannot be placed in musical time as asked (kept gaps that go back or are too long)."""


class OutputPathError(GradbridgeError, ValueError):
    """Two outputs on one path, or an output on an input: refused before anything opens."""


class UsageError(GradbridgeError, RuntimeError):
    """A gradbridge object used out of order (e.g. before it was set up, or after it was closed)."""
