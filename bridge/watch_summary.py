"""A watched run's closing account: the run log's and each follower's story, told as one ``DispatchStats``."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from bridge.capture import Capture
from bridge.dispatch import DispatchStats
from bridge.follower import FollowReport
from bridge.runlog import RunLogWriter

log = logging.getLogger("bridge")

#: The name the summary gives the follower process when it failed.
FOLLOWER_NAME = "outputs process"
#: Below this many seconds of catching up after training, the summary does not mention it.
_QUIET_FINISH_S = 0.5


@dataclass
class Ending:
    """What closing a watch found: each part's report or failure."""

    run_log_error: str | None = None
    process: FollowReport | None = None
    process_failure: str | None = None
    thread: FollowReport | None = None
    interrupted: bool = False


def summarize(writer: RunLogWriter | None, capture: Capture, ending: Ending, *, temporary: bool) -> DispatchStats:
    """The run's stats: frames captured and recorded, what every output did, and what a user should know.

    A temporary run log is removed when the follower process finished; when it did not, the log is kept and
    the summary says how to regenerate the files from it.
    """
    if writer is None:  # a silent rank
        return DispatchStats()
    reports = [r for r in (ending.process, ending.thread) if r is not None]
    stats = DispatchStats(frames_in=writer.appended, frames_unreadable=capture.errors, consumers=("run log",))
    if capture.first_error is not None:
        stats.first_unreadable = f"capture failed: {capture.first_error}"
    if writer.first_error is not None:
        if writer.dropped:
            stats.add_error("run log", f"{writer.first_error}; {writer.dropped} frame(s) lost")
        else:
            stats.remarks.append(f"the run log could not be written {writer.first_error} and caught up later")
    if ending.run_log_error is not None:
        stats.add_error("run log", f"at close ({ending.run_log_error})")
    done = writer.written
    for report in reports:
        _merge(stats, report)
        done = min(done, report.stats.frames_done)
    stats.frames_done = done
    stats.frames_dropped = max(0, stats.frames_in - done - sum(r.damaged_records for r in reports))
    if ending.process_failure is not None:
        stats.add_error(FOLLOWER_NAME, ending.process_failure)
        stats.remarks.append(f"the run log {writer.path} holds every frame: `gradbridge render {writer.path} -o "
                             f"run.wav` and `gradbridge midi {writer.path} -o run.mid` write the files again")
    elif temporary:
        _remove(writer.path)
    return stats


def _merge(stats: DispatchStats, report: FollowReport) -> None:
    """Add a follower's outputs, failures and remarks to ``stats``."""
    theirs = report.stats
    stats.consumers = (*stats.consumers, *(n for n in theirs.consumers if n not in stats.consumers))
    for name, count in theirs.errors.items():
        stats.add_error(name, theirs.first_errors.get(name, ""), count)
    for name, note in theirs.notes.items():
        stats.notes.setdefault(name, note)
    for name, missed in theirs.missed.items():
        stats.missed[name] = stats.missed.get(name, 0) + missed
    if report.damaged_records:
        stats.frames_unreadable += report.damaged_records
        stats.first_unreadable = stats.first_unreadable or theirs.first_unreadable
    if report.finish_s >= _QUIET_FINISH_S:
        stats.remarks.append(f"the outputs finished {report.finish_s:.1f} s after training "
                             f"({report.lag_frames} frames behind)")
    stats.remarks.extend(report.remarks)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError as exc:
        log.warning("could not remove the temporary run log %s: %s", path, exc.strerror or exc)
