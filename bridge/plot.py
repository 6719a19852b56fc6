"""``gradbridge plot``: a picture of a run, next to its sound. Needs matplotlib (``pip install "gradbridge[plot]"``).

Top to bottom, sharing the step axis: each layer's gradient norm on a log scale (norms of zero or below
drawn on a dotted floor a decade under the smallest positive norm); the NaN/Inf alarms, one row per
layer; the loss and learning rate, where the run has them; and a piano roll of the notes the preset plays,
the same notes its MIDI file holds. Runs with more steps than the picture has pixel columns are drawn
decimated (``bridge.decimate``), never dropping an alarm. Reads run logs and CSVs without torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bridge.atomic import replacing
from bridge.errors import GradbridgeError
from bridge.plot_data import PlotData, first_alarm_step, read_plot_data

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DEFAULT_DPI", "DEFAULT_HEIGHT_PX", "DEFAULT_WIDTH_PX", "FORMATS", "MAX_ALARM_MARKERS",
           "PlotDependencyError", "build_figure", "plot_run", "require_matplotlib", "save_figure", "title_of"]

#: Picture size when none is asked for, in pixels, and dots per inch (for PNG; SVG and PDF get
#: width / dpi by height / dpi inches).
DEFAULT_WIDTH_PX, DEFAULT_HEIGHT_PX, DEFAULT_DPI = 1600, 1000, 100
#: File formats, chosen by the output's suffix.
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
#: Above this many alarms, runs of consecutive alarms are drawn as bars instead of one marker each.
MAX_ALARM_MARKERS = 20_000
#: The smallest and largest picture side accepted, in pixels.
MIN_SIDE_PX, MAX_SIDE_PX = 200, 20_000
_INSTALL = 'pip install "gradbridge[plot]"'


class PlotDependencyError(GradbridgeError, ImportError):
    """matplotlib, which ``gradbridge plot`` needs, is not installed."""


def require_matplotlib() -> None:
    """Raise ``PlotDependencyError`` naming the ``plot`` extra when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise PlotDependencyError(f"gradbridge plot needs matplotlib, which is not installed; "
                                  f"install it with: {_INSTALL}") from exc


def plot_run(run: str | os.PathLike[str], output: str | os.PathLike[str], *, mapping: str | Path | None = None,
             width_px: int = DEFAULT_WIDTH_PX, height_px: int = DEFAULT_HEIGHT_PX, dpi: int = DEFAULT_DPI,
             strict: bool = False) -> PlotData:
    """Draw the run log or CSV ``run`` into ``output`` (.png, .svg or .pdf); returns what was drawn.

    ``mapping`` picks the preset whose notes the piano roll shows (default: the run's own, else
    pentatonic). The picture is ``width_px`` × ``height_px`` pixels at ``dpi`` dots per inch. ``strict``:
    a damaged run log record is an error instead of being skipped. The picture is written beside
    ``output`` and renamed into place once complete, so a failure leaves an older file as it was.
    """
    output_text = os.fspath(output)
    format_of(output_text)
    _check_size(width_px, height_px, dpi)
    require_matplotlib()
    parent = os.path.dirname(os.path.abspath(output_text))
    if not os.path.isdir(parent):
        raise GradbridgeError(f"cannot write {output_text}: directory {parent} does not exist; create it first")
    data = read_plot_data(run, mapping, strict=strict)
    save_figure(build_figure(data, width_px=width_px, height_px=height_px, dpi=dpi), output_text)
    return data


def format_of(output: str) -> str:
    """The file format for ``output``'s suffix; ``ValueError`` naming the suffixes allowed."""
    suffix = Path(output).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"output {output!r} has the suffix {suffix or '(none)'!r}; gradbridge plot writes "
                         f"{', '.join(FORMATS)}: name the file e.g. run.png")
    return FORMATS[suffix]


def _check_size(width_px: int, height_px: int, dpi: int) -> None:
    for name, value, low, high in (("width_px", width_px, MIN_SIDE_PX, MAX_SIDE_PX),
                                   ("height_px", height_px, MIN_SIDE_PX, MAX_SIDE_PX), ("dpi", dpi, 10, 2000)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int from {low} to {high}; got {type(value).__name__} {value!r}")
        if not low <= value <= high:
            raise ValueError(f"{name} must be from {low} to {high}; got {value}")


def title_of(data: PlotData) -> str:
    """The picture's title: run, preset, layers and steps, and the alarms."""
    head = (f"{data.run_name}: preset {data.mapping_name}, {data.layer_count} layers, "
            f"{data.frame_count} steps")
    first = first_alarm_step(data)
    if first is None:
        return head + ", no NaN/Inf alarms"
    return head + f", {data.alarm_count} NaN/Inf alarms from step {first}"


def build_figure(data: PlotData, *, width_px: int = DEFAULT_WIDTH_PX, height_px: int = DEFAULT_HEIGHT_PX,
                 dpi: int = DEFAULT_DPI, max_alarm_markers: int = MAX_ALARM_MARKERS) -> Figure:
    """The picture of ``data`` as a matplotlib ``Figure`` of ``width_px`` × ``height_px`` pixels at ``dpi``.

    Runs of more steps than ``width_px`` are decimated per pixel column (the axes are narrower than the
    figure, so each column of the axes holds at least one decimation column).
    """
    _check_size(width_px, height_px, dpi)
    require_matplotlib()
    from matplotlib.figure import Figure

    from bridge.plot_panels import Columns, draw_alarms, draw_loss_lr, draw_norms, draw_piano_roll, layer_colours

    if data.frame_count == 0:
        raise GradbridgeError(f"{data.run_name} holds no steps; there is nothing to plot")
    panels = ["norms"]
    if data.alarm_count:
        panels.append("alarms")
    if np.isfinite(data.loss).any() or np.isfinite(data.lr).any():
        panels.append("loss")
    panels.append("roll")
    heights = {"norms": 3.0, "alarms": 1.0 if data.layer_count <= 16 else 1.6, "loss": 1.2, "roll": 2.6}
    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True,
                           gridspec_kw={"height_ratios": [heights[p] for p in panels]}, squeeze=False)[:, 0]
    cols = Columns(data.steps, width_px)
    colours = layer_colours(data.layer_count)
    for ax, panel in zip(axes, panels):
        ax.set_label(panel)
        if panel == "norms":
            draw_norms(ax, data, cols, colours)
        elif panel == "alarms":
            draw_alarms(ax, data, max_alarm_markers)
        elif panel == "loss":
            draw_loss_lr(ax, data, cols)
        else:
            draw_piano_roll(ax, data, cols, colours)
    last = float(data.steps[-1]) + max(1.0, float(data.note_length_steps.max(initial=0.0)))
    axes[-1].set_xlim(float(data.steps[0]), last)
    axes[-1].set_xlabel("step" + (" (decimated: lowest and highest per pixel column)" if cols.decimated else ""))
    figure.suptitle(title_of(data))
    return figure


def save_figure(figure: Figure, output: str | os.PathLike[str]) -> None:
    """Write ``figure`` to ``output`` in the format its suffix names (.png, .svg, .pdf), at its own size,
    whole: into a temporary file beside it, renamed into place once complete (``bridge.atomic``)."""
    output_text = os.fspath(output)
    file_format = format_of(output_text)
    with replacing(output_text, "picture") as temporary:
        try:
            figure.savefig(temporary, format=file_format, dpi=figure.dpi)
        except OSError as exc:
            raise GradbridgeError(f"cannot write {output_text}: {exc.strerror or exc}; it was left as it was") from exc
