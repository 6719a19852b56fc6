"""Sinks: where events go. Each sink is opened once with the ``Arrangement``, fed ``StepEvents``, closed."""

from bridge.sinks.base import Sink

__all__ = ["Sink"]
