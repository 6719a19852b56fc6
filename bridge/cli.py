"""The ``gradbridge`` command: ``demo``, ``render``, ``midi``, ``plot``, ``export``, ``replay``, ``follow``,
``serve``, ``ports``, ``mappings``.

``render``, ``midi``, ``plot`` and ``export`` read a run log or a CSV of norms and never import torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.outputs import OutputSpec

from bridge.cli_serve import add_serve_options, add_serve_parser, announce_page, follow_summary
from bridge.dispatch import DispatchStats
from bridge.errors import GradbridgeError
from bridge.offline import Progress, mapping_for
from bridge.steps import MAX_GAP_STEPS

__all__ = ["Progress", "build_parser", "main"]

EPILOG = """examples:
  gradbridge demo                                  the 2019 post's experiment: demo.wav, demo.mid, demo.gbrun
  gradbridge demo --optimizer sgd --lr 1.0 --batch-size 256 --steps 200   the post's diverging run
  gradbridge render demo.gbrun -o run.wav --mapping pentatonic
  gradbridge midi demo.gbrun -o run.mid --mapping daw
  gradbridge plot demo.gbrun -o run.png            a picture: norms, alarms, loss, the notes played
  gradbridge export demo.gbrun -o norms.csv        a run log as CSV (render and midi read it back)
  gradbridge replay demo.gbrun --osc 127.0.0.1:57120 --speed 2   live, to SuperCollider / Max / Pd
  gradbridge replay demo.gbrun --midi "IAC Driver" --play          live, to a DAW and the speakers
  gradbridge follow run.gbrun --osc 127.0.0.1:57120   a run another process is writing, live from now
  gradbridge follow run.gbrun --midi DAW --midi-clock   on the preset's sixteenth notes, the DAW in time
  gradbridge follow run.gbrun --midi DAW --clock-in DAW  on the DAW's own MIDI clock
  ssh gpu-box cat run.gbrun | gradbridge follow - --play            a run on another machine
  gradbridge serve run.gbrun --port 8765           a page that plays and plots the run, reachable through
                                                   ssh -N -L 8765:127.0.0.1:8765 gpu-box
  gradbridge ports                                 MIDI outputs this machine has, and the MIDI API
  gradbridge mappings                              every preset, in plain words

steps: each logged step sounds as one musical step, whatever its number (a run logged every 10 steps plays
  without silences; the real numbers stay in OSC, in the MIDI file's markers and in an exported CSV);
  --keep-gaps sounds missing steps as silence. Outputs are written whole: a render that fails part-way
  leaves an older file of that name as it was.

exit status:
  0    done
  1    a problem with the input, a preset, an output or this machine; one line says what, where and the fix
       (replay and follow: also when an output failed on the way; the closing summary says which)
  2    a mistake in the command line itself (an unknown option, a missing argument)
  130  interrupted (Ctrl-C); an offline output is then left as it was
  143  follow: ended by SIGTERM, its files finished
"""


def add_reading_options(parser: argparse.ArgumentParser, *, gaps: bool = True) -> None:
    """``--strict`` (any damage in the run log is an error) and, where the run's steps are placed in time,
    ``--keep-gaps``."""
    parser.add_argument("--strict", action="store_true",
                        help="fail on any damaged record of the run log (default: skip it, warn, read the rest)")
    if gaps:
        parser.add_argument("--keep-gaps", action="store_true",
                            help="sound missing step numbers as silence (default: each logged step is one musical "
                                 f"step; a gap over {MAX_GAP_STEPS} steps is refused)")


def cmd_render(args: argparse.Namespace) -> int:
    """Render a run log or CSV to a WAV file with the built-in synth."""
    from bridge.offline import render_run

    render_run(args.run, args.output, "wav", mapping=args.mapping, strict=args.strict, keep_gaps=args.keep_gaps,
               wav_format=args.format)
    return 0


def cmd_midi(args: argparse.Namespace) -> int:
    """Write a run log or CSV as a Standard MIDI File."""
    from bridge.offline import render_run

    render_run(args.run, args.output, "midi", mapping=args.mapping, strict=args.strict, keep_gaps=args.keep_gaps)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write a run log as CSV (step, wall_time, loss, lr, one column per layer)."""
    from bridge.offline import export_run

    export_run(args.run, args.output, strict=args.strict)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw a run log or CSV: norms per layer, NaN/Inf alarms, loss and learning rate, and the notes played."""
    from bridge.outputs import refuse_same_files
    from bridge.plot import plot_run

    refuse_same_files([("run", args.run), ("output", args.output)])
    started = time.perf_counter()
    data = plot_run(args.run, args.output, mapping=args.mapping, width_px=args.width, height_px=args.height,
                    dpi=args.dpi, strict=args.strict)
    print(f"gradbridge: wrote {args.output}: {data.frame_count} steps x {data.layer_count} layers, preset "
          f"{data.mapping_name}, {data.alarm_count} NaN/Inf alarms, in {time.perf_counter() - started:.2f} s",
          file=sys.stderr)
    return 0


def _status(stats: DispatchStats) -> int:
    """The exit status after live outputs ran: 1 when one of them failed (the summary says which), else 0."""
    return 1 if stats.first_errors else 0


def _live_spec(args: argparse.Namespace, **more: object) -> OutputSpec:
    """The outputs asked for by the live options (``add_live_options``) and ``more`` (files, the page)."""
    from bridge.outputs import OutputSpec

    clocks = {name: getattr(args, name) for name in ("clock", "midi_clock", "clock_in", "link") if hasattr(args, name)}
    return OutputSpec(midi=args.midi, midi_api=args.midi_api, midi_virtual=args.virtual, osc=args.osc,
                      play=args.play, every=args.every, max_fps=args.max_fps, **clocks, **more)  # type: ignore[arg-type]


def cmd_replay(args: argparse.Namespace) -> int:
    """Send a recorded run (or CSV) live to MIDI, OSC and the speakers, at musical time."""
    from bridge.mapping import Mapping
    from bridge.outputs import open_outputs
    from bridge.replay import check_speed, replay
    from bridge.runlog import open_run

    spec = dataclasses.replace(_live_spec(args), clock="free")  # replay paces the steps at musical time itself
    if not spec.has_live:
        raise GradbridgeError("nothing to replay to. Fix: add --midi PORT, --osc HOST:PORT or --play")
    check_speed(args.speed)
    info, frames = open_run(args.run, strict=args.strict)
    mapping = Mapping.load(mapping_for(info.metadata, args.mapping), keep_gaps=args.keep_gaps)
    print(f"gradbridge: {mapping.arrange(info.layer_names).description}", file=sys.stderr)
    stats = replay(frames, open_outputs(spec, mapping, info), speed=args.speed, keep_gaps=args.keep_gaps)
    print(f"gradbridge: {stats.summary()}", file=sys.stderr)
    return _status(stats)


def cmd_follow(args: argparse.Namespace) -> int:
    """Follow a run log another process is writing (or one piped into standard input) and drive outputs
    from it: live ones from now on, files too; exits when the writer closes the log, or on Ctrl-C."""
    import threading

    from bridge.follower import Follower
    from bridge.follower_process import stop_on_signals
    from bridge.mapping import Mapping
    from bridge.outputs import open_outputs
    from bridge.tail import open_tail

    spec = _live_spec(args, wav=args.wav, midi_file=args.midi_file, serve=args.serve, serve_host=args.host,
                      serve_token=args.token)
    spec = dataclasses.replace(spec, wav_format=args.format)
    if not (spec.has_live or spec.has_files):
        raise GradbridgeError("nothing to follow to. Fix: add --osc HOST:PORT, --midi PORT, --play, --serve PORT, "
                              "--wav FILE or --midi-file FILE")
    if spec.serve is not None:
        from bridge.serve import require_aiohttp

        require_aiohttp()
    if args.run != "-":
        spec.check_paths(inputs=[("run", args.run)])
    stop, signals = threading.Event(), []
    stop_on_signals(stop, signals)
    tail = open_tail(args.run, from_start=args.from_start, stop=stop, strict=args.strict)
    if tail is None:
        return 128 + signals[0] if signals else 130
    mapping = Mapping.load(mapping_for(tail.info.metadata, args.mapping), keep_gaps=args.keep_gaps)
    outputs = open_outputs(spec, mapping, tail.info, run_name=Path(tail.where).name if args.run != "-" else "")
    where = "from its start" if args.from_start or args.run == "-" else "from now"
    print(f"gradbridge: following {tail.where} {where}: {outputs.arrangement.description}", file=sys.stderr)
    announce_page(outputs)
    report = Follower(tail, outputs, stop=stop).run()
    print(f"gradbridge: {report.reason}; {follow_summary(report)}", file=sys.stderr)
    return 128 + signals[0] if signals else _status(report.stats)  # 130 after Ctrl-C, 143 after SIGTERM


def cmd_ports(args: argparse.Namespace) -> int:
    """List the MIDI outputs this machine has, and which MIDI API is in use."""
    from bridge.sinks.midi_system import describe_ports

    print(describe_ports(args.api))
    return 0


def add_live_options(parser: argparse.ArgumentParser) -> None:
    """The options that pick live outputs, shared by ``demo`` and ``replay``."""
    parser.add_argument("--midi", metavar="PORT", default=None,
                        help="send to this MIDI output (a unique part of its name is enough; see gradbridge ports)")
    parser.add_argument("--midi-api", choices=("alsa", "jack", "coremidi", "winmm"), default=None,
                        help="MIDI API (default: the platform's own)")
    parser.add_argument("--virtual", action="store_true",
                        help="create a virtual MIDI output (named --midi, or gradbridge) for a DAW to connect to")
    parser.add_argument("--osc", metavar="HOST:PORT", default=None,
                        help="send OSC bundles there, e.g. 127.0.0.1:57120 (SuperCollider's sclang)")
    parser.add_argument("--play", action="store_true", help="play through the speakers (needs PyAudio)")
    parser.add_argument("--every", type=int, default=None, help="live outputs sound every Nth step")
    parser.add_argument("--max-fps", type=float, default=None, help="live outputs sound at most this many steps a second")


def add_clock_options(parser: argparse.ArgumentParser) -> None:
    """The options of the live clock, shared by ``demo``, ``follow`` and ``serve``."""
    parser.add_argument("--clock", choices=("tempo", "free"), default=None,
                        help="live outputs tick at the preset's tempo, each tick the max of the steps since the "
                             "last (tempo), or sound each step as it arrives (free); default: the preset's")
    parser.add_argument("--midi-clock", metavar="PORT", nargs="?", const=True, default=False,
                        help="send MIDI clock (24 a quarter note, Start, Stop) on the --midi port, or on PORT")
    parser.add_argument("--clock-in", metavar="PORT", default=None,
                        help="follow the MIDI clock (tempo, Start, Stop) of this MIDI output, e.g. your DAW's")
    parser.add_argument("--link", action="store_true",
                        help="follow an Ableton Link session's tempo and beats (pip install \"gradbridge[link]\")")


def cmd_mappings(args: argparse.Namespace) -> int:
    """List every built-in preset, described in plain words."""
    from bridge.mapping import describe
    from bridge.presets import builtin_names, load_preset

    for name in builtin_names():
        print(f"{name}\n    {describe(load_preset(name))}\n")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Train the 2019 post's CNN on real digits and hear it: WAV, MIDI file and run log."""
    from bridge.demo import DemoConfig, train_demo
    from bridge.watching import watch

    config = DemoConfig(optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
                        batch_size=args.batch_size, steps=args.steps, seed=args.seed, mnist_dir=args.mnist)
    out = Path(args.out_dir)
    if not out.is_dir():
        raise GradbridgeError(f"--out-dir {out} is not a directory. Fix: create it, or pass an existing folder")
    wav, mid, run = (out / f"{args.name}{suffix}" for suffix in (".wav", ".mid", ".gbrun"))
    print(f"gradbridge: training the 2019 post's CNN: {config.describe()}", file=sys.stderr)
    progress = Progress(config.steps, "train")

    def listen(model, optimizer):  # type: ignore[no-untyped-def]
        return watch(model, optimizer, mapping=args.mapping, record=run, wav=wav, midi_file=mid,
                     params="weights", wav_format=args.format, midi=args.midi, midi_api=args.midi_api,
                     midi_virtual=args.virtual, osc=args.osc, play=args.play, every=args.every,
                     max_fps=args.max_fps, clock=args.clock, midi_clock=args.midi_clock, clock_in=args.clock_in,
                     link=args.link)

    result = train_demo(config, on_optimizer=listen,
                        on_step=(lambda step, loss: progress.update(step + 1)) if progress.enabled else None)
    progress.finish()
    status = (f"diverged: loss became NaN/Inf at step {result.first_non_finite_step}"
              if result.non_finite else f"final loss {result.final_loss:.4f}")
    print(f"gradbridge: {result.steps} steps on {result.data_source}, {status}", file=sys.stderr)
    print(f"gradbridge: wrote {wav}, {mid} and {run}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``gradbridge`` command."""
    parser = argparse.ArgumentParser(
        prog="gradbridge", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Hear neural-network training: each layer's gradient norm becomes sound.")
    parser.add_argument("-v", "--verbose", action="store_true", help="print debug messages")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND")
    verbs.required = True

    demo = verbs.add_parser("demo", help="train the 2019 post's CNN on real digits and write what it sounds like",
                            description=cmd_demo.__doc__)
    demo.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd", help="default: sgd")
    demo.add_argument("--lr", type=float, default=0.01, help="learning rate (default 0.01)")
    demo.add_argument("--momentum", type=float, default=0.5, help="SGD momentum (default 0.5, as in the post)")
    demo.add_argument("--batch-size", type=int, default=10, help="default 10, as in the post")
    demo.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--mapping", default="perone2019", help="preset name or .toml path (default perone2019)")
    demo.add_argument("--mnist", metavar="DIR", default=None,
                      help="folder with MNIST's train-images-idx3-ubyte and train-labels-idx1-ubyte "
                           "(default: scikit-learn's handwritten digits, offline)")
    demo.add_argument("--out-dir", default=".", help="where to write the files (default: here)")
    demo.add_argument("--name", default="demo", help="file name stem (default demo: demo.wav, demo.mid, demo.gbrun)")
    demo.add_argument("--format", choices=("int16", "float32"), default="int16", help="WAV samples (default int16)")
    add_live_options(demo)
    add_clock_options(demo)
    demo.set_defaults(func=cmd_demo)

    for verb, func, what, default_out in (("render", cmd_render, "a WAV file with the built-in synth", "run.wav"),
                                           ("midi", cmd_midi, "a Standard MIDI File (type 1)", "run.mid")):
        sub = verbs.add_parser(verb, help=f"turn a run log or CSV into {what}", description=func.__doc__)
        sub.add_argument("run", help="a run log (.gbrun) or a CSV with a 'step' column and one column per layer")
        sub.add_argument("-o", "--output", default=default_out, help=f"output file (default {default_out})")
        sub.add_argument("-m", "--mapping", default=None,
                         help="preset name or .toml path (default: the run's own preset, else pentatonic)")
        if verb == "render":
            sub.add_argument("--format", choices=("int16", "float32"), default="int16",
                             help="WAV samples (default int16)")
        add_reading_options(sub)
        sub.set_defaults(func=func)

    plot = verbs.add_parser("plot", help="draw a run log or CSV as a picture (PNG, SVG or PDF; needs matplotlib)",
                            description=cmd_plot.__doc__ + " Needs matplotlib: pip install \"gradbridge[plot]\".")
    plot.add_argument("run", help="a run log (.gbrun) or a CSV with a 'step' column and one column per layer")
    plot.add_argument("-o", "--output", default="run.png",
                      help="picture to write; .png, .svg or .pdf by its suffix (default run.png)")
    plot.add_argument("-m", "--mapping", default=None,
                      help="preset whose notes the piano roll shows (default: the run's own, else pentatonic)")
    plot.add_argument("--width", type=int, default=1600, help="width in pixels (default 1600)")
    plot.add_argument("--height", type=int, default=1000, help="height in pixels (default 1000)")
    plot.add_argument("--dpi", type=int, default=100,
                      help="dots per inch (default 100); SVG and PDF are width/dpi by height/dpi inches")
    add_reading_options(plot, gaps=False)
    plot.set_defaults(func=cmd_plot)

    export = verbs.add_parser("export", help="write a run log as CSV", description=cmd_export.__doc__)
    export.add_argument("run", help="a run log (.gbrun)")
    export.add_argument("-o", "--output", default="norms.csv", help="output CSV (default norms.csv)")
    add_reading_options(export, gaps=False)
    export.set_defaults(func=cmd_export)

    replay = verbs.add_parser("replay", help="send a recorded run live to MIDI, OSC or the speakers",
                              description=cmd_replay.__doc__)
    replay.add_argument("run", help="a run log (.gbrun) or a CSV of norms")
    replay.add_argument("-m", "--mapping", default=None,
                        help="preset name or .toml path (default: the run's own preset, else pentatonic)")
    replay.add_argument("--speed", type=float, default=1.0, help="2 plays twice as fast (default 1; 0.001 to 1000000)")
    add_live_options(replay)
    add_reading_options(replay)
    replay.set_defaults(func=cmd_replay)

    follow = verbs.add_parser("follow", help="drive outputs from a run log while another process writes it",
                              description=cmd_follow.__doc__)
    follow.add_argument("run", help="a run log (.gbrun) being written, or - for one piped into standard input")
    follow.add_argument("-m", "--mapping", default=None,
                        help="preset name or .toml path (default: the run's own preset, else pentatonic)")
    follow.add_argument("--from-start", action="store_true",
                        help="start from the log's first frame (default: from now; a stream always starts there)")
    follow.add_argument("--wav", metavar="FILE", default=None, help="also render a WAV file")
    follow.add_argument("--midi-file", metavar="FILE", default=None, help="also write a Standard MIDI File")
    follow.add_argument("--format", choices=("int16", "float32"), default="int16", help="WAV samples (default int16)")
    add_live_options(follow)
    add_clock_options(follow)
    add_serve_options(follow, "--serve")
    add_reading_options(follow)
    follow.set_defaults(func=cmd_follow)

    add_serve_parser(verbs)

    ports = verbs.add_parser("ports", help="list MIDI outputs and the MIDI API in use", description=cmd_ports.__doc__)
    ports.add_argument("--api", choices=("alsa", "jack", "coremidi", "winmm"), default=None,
                       help="MIDI API to ask (default: the platform's own)")
    ports.set_defaults(func=cmd_ports)

    mappings = verbs.add_parser("mappings", help="list the presets in plain words", description=cmd_mappings.__doc__)
    mappings.set_defaults(func=cmd_mappings)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """A warning as one line, ``gradbridge: warning: ...`` (not Python's file, line and source)."""
    print(f"gradbridge: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status the help lists (0 done, 1 a problem with the input, a
    preset, an output or the machine, 2 a mistake in the command line, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="gradbridge: %(message)s")
    with warnings.catch_warnings():
        if not args.verbose:
            warnings.showwarning = _show_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except BrokenPipeError:  # e.g. `gradbridge mappings | head`: the reader left, nothing is wrong
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush from failing again
        return 0
    except KeyboardInterrupt:
        if args.verb in ("render", "midi", "export", "plot"):
            print(f"gradbridge: interrupted; nothing was written to {args.output} (an older file of that name is "
                  "left as it was)", file=sys.stderr)
        else:
            print("gradbridge: interrupted; what was recorded so far has been written", file=sys.stderr)
        return 130
    except (GradbridgeError, ValueError, TypeError, OSError, RuntimeError, ImportError) as err:
        if args.verbose:
            raise
        print(f"gradbridge: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # not a mistake of the user's: say so, in one line
        if args.verbose:
            raise
        print(f"gradbridge: error: {type(err).__name__}: {err} (this is a gradbridge bug: run it again with -v "
              f"for the traceback, and please report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
