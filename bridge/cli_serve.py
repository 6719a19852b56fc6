"""The ``gradbridge serve`` command, and the page's options ``follow`` shares (``--serve``, ``--host``,
``--token``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bridge.errors import GradbridgeError


def announce_page(outputs: object) -> object:
    """Print the page's address and how to reach it from another machine; the page output, or ``None``."""
    from bridge.outputs import page_of
    from bridge.serve import reach_hint

    page = page_of(outputs)  # type: ignore[arg-type]
    if page is not None:
        print(f"gradbridge: serving {page.url}   ({reach_hint(page.url)})", file=sys.stderr, flush=True)
    return page


def follow_summary(report: object) -> str:
    """A follower's report in words, with how far behind the writer it was when the writer closed the log."""
    summary = report.stats.summary()  # type: ignore[attr-defined]
    if report.frames_written is not None and report.lag_frames < report.stats.frames_done:  # type: ignore[attr-defined]
        summary += (f"; {report.lag_frames} frame(s) behind when the writer closed the log, "  # type: ignore[attr-defined]
                    f"done {report.finish_s:.2f} s later")  # type: ignore[attr-defined]
    return summary


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve a web page that plays the run live (Web Audio), plots it (norms per layer, loss, learning rate,
    alarms, what sounds) and routes it to Web MIDI, for a run being written or a finished one. The page gets
    the run from its start for its plots and plays from the moment it is opened. Serves until Ctrl-C."""
    import threading

    from bridge.follower import Follower
    from bridge.follower_process import stop_on_signals
    from bridge.mapping import Mapping
    from bridge.offline import mapping_for
    from bridge.outputs import OutputSpec, open_outputs
    from bridge.serve import require_aiohttp
    from bridge.tail import open_tail

    require_aiohttp()
    spec = OutputSpec(serve=args.port, serve_host=args.host, serve_token=args.token, every=args.every,
                      max_fps=args.max_fps, clock=args.clock, midi_clock=args.midi_clock, clock_in=args.clock_in,
                      link=args.link)
    stop = threading.Event()
    stop_on_signals(stop)
    tail = open_tail(args.run, from_start=not args.from_now, stop=stop, strict=args.strict)
    if tail is None:
        return 130
    mapping = Mapping.load(mapping_for(tail.info.metadata, args.mapping), keep_gaps=args.keep_gaps)
    outputs = open_outputs(spec, mapping, tail.info, run_name=Path(tail.where).name if args.run != "-" else "")
    if outputs.failed_to_open:
        tail.close()
        raise GradbridgeError("; ".join(outputs.failed_to_open.values()))
    page = announce_page(outputs)
    print(f"gradbridge: {outputs.arrangement.description}", file=sys.stderr, flush=True)
    page.linger = True  # type: ignore[attr-defined]
    try:
        report = Follower(tail, outputs, stop=stop).run()
        interrupted = stop.is_set()
        print(f"gradbridge: {report.reason}; {follow_summary(report)}", file=sys.stderr, flush=True)
        if not interrupted:
            print("gradbridge: still serving the run; Ctrl-C to stop", file=sys.stderr, flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        page.stop()  # type: ignore[attr-defined]
    return 130 if interrupted else 0


def add_serve_options(parser: argparse.ArgumentParser, port_flag: str, default: int | None = None) -> None:
    """The page's options: its port (``--port`` or ``--serve``), ``--host`` and ``--token``."""
    shown = f" (default {default})" if default is not None else ""
    parser.add_argument(port_flag, dest="serve" if port_flag == "--serve" else "port", metavar="PORT", type=int,
                        default=default, help=f"serve the page on this TCP port{shown}; 0 picks a free one")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; reach it through an SSH "
                             "tunnel); another address lets anyone who can reach it and has the token listen")
    parser.add_argument("--token", default=None,
                        help="the token every request needs (default: a fresh random one, printed in the address)")


def add_serve_parser(verbs: Any) -> None:
    """The ``serve`` verb."""
    serve = verbs.add_parser("serve", help="serve a page that plays, plots and routes a run to Web MIDI, from anywhere "
                                           "(needs aiohttp)", description=cmd_serve.__doc__ +
                             ' Needs aiohttp: pip install "gradbridge[serve]".')
    serve.add_argument("run", help="a run log (.gbrun), being written or finished, or - for one piped into "
                                   "standard input")
    serve.add_argument("-m", "--mapping", default=None,
                       help="preset name or .toml path (default: the run's own preset, else pentatonic)")
    serve.add_argument("--from-now", action="store_true",
                       help="leave out the frames already in the log (default: the plots start at its first frame)")
    serve.add_argument("--every", type=int, default=None, help="sound every Nth step")
    serve.add_argument("--max-fps", type=float, default=None, help="sound at most this many steps a second")
    add_serve_options(serve, "--port", default=8765)
    from bridge.cli import add_clock_options, add_reading_options

    add_clock_options(serve)
    add_reading_options(serve)
    serve.set_defaults(func=cmd_serve)
