"""The panels of ``gradbridge plot``, each drawn onto a matplotlib ``Axes`` sharing the step axis.

Norms (log scale, one line per layer), NaN/Inf alarms (one row per layer), loss and learning rate, and
the piano roll of what the preset plays. Runs longer than the plot is wide are drawn decimated
(``bridge.decimate``): per pixel column each line keeps its lowest and highest value and the piano roll
each layer's lowest and highest note; alarms are never dropped.

Artists carry a ``gid`` saying what they hold (``"norm-3"``: layer 3's norms; ``"notes"``, ``"note-ranges"``,
``"alarms-nan"``, ``"alarm-runs-nan"``, ``"loss"``, ``"lr"``, ``"zero-floor"``), so tests and scripts can
find them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.decimate import alarm_runs, column_starts, min_max_columns, step_to_column
from bridge.plot_data import ALARM_CODES, NO_NOTE, PlotData, first_alarm_step

if TYPE_CHECKING:  # matplotlib is an optional extra, imported only when drawing
    from matplotlib.axes import Axes

#: Most entries the norms' legend holds; more layers are shown as groups of neighbouring layers.
MAX_LEGEND_ENTRIES = 12
#: Up to this many layers, the alarms panel names every layer on its axis.
MAX_NAMED_LAYERS = 16
#: Marker and colour of each alarm kind.
ALARM_STYLE: dict[str, tuple[str, str]] = {"nan": ("x", "#d62728"), "+inf": ("^", "#9467bd"),
                                          "-inf": ("v", "#8c564b")}
_NAME_CHARS = 22


def layer_colours(layer_count: int) -> np.ndarray:
    """One RGBA colour per layer: distinct colours up to 20 layers, a gradient by depth beyond."""
    from matplotlib import colormaps

    if layer_count <= 10:
        return colormaps["tab10"](np.arange(layer_count))
    if layer_count <= 20:
        return colormaps["tab20"](np.arange(layer_count))
    return colormaps["viridis"](np.linspace(0.0, 0.92, layer_count))


def legend_groups(layer_count: int, max_entries: int = MAX_LEGEND_ENTRIES) -> list[tuple[int, int]]:
    """Neighbouring layers grouped into at most ``max_entries`` groups, as (first, last) layer indices."""
    if layer_count <= max_entries:
        return [(i, i) for i in range(layer_count)]
    edges = np.linspace(0, layer_count, max_entries + 1).round().astype(int)
    return [(int(a), int(b) - 1) for a, b in zip(edges[:-1], edges[1:])]


def short_name(name: str, chars: int = _NAME_CHARS) -> str:
    """``name`` cut to ``chars`` characters, the cut marked with an ellipsis in the middle."""
    if len(name) <= chars:
        return name
    keep = chars - 1
    return name[: keep // 2] + "…" + name[len(name) - (keep - keep // 2):]


def note_name(note: int) -> str:
    """MIDI note number → name with octave, middle C (60) being C4."""
    return f"{('C', 'C#', 'D', 'D#', 'E', 'F', 'F#', 'G', 'G#', 'A', 'A#', 'B')[note % 12]}{note // 12 - 1}"


def zero_floor(norms: np.ndarray) -> float:
    """Where norms of zero (or below) are drawn on the log axis: a decade under the smallest positive norm,
    rounded down to a power of ten (1e-3 when no norm is positive)."""
    smallest = float(np.min(norms, initial=np.inf, where=(norms > 0) & (norms < np.inf)))  # NaN fails both
    if smallest == np.inf:
        return 1e-3
    return float(10.0 ** (math.floor(math.log10(smallest)) - 1))


class Columns:
    """How the run's frames fall into the plot's pixel columns: one column per frame when there are no more
    frames than ``columns`` (nothing decimated), else ``step_to_column``'s equal parts of the step range."""

    def __init__(self, steps: np.ndarray, columns: int) -> None:
        self.columns = columns
        self.decimated = steps.shape[0] > columns
        self.column = step_to_column(steps, columns) if self.decimated else np.arange(steps.shape[0])
        self.starts = column_starts(self.column)

    def series(self, steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One line's points: every (step, value), or per column the lowest and highest in step order.

        Non-finite values become NaN (a gap); in a column with no finite value a NaN point breaks the line.
        """
        if not self.decimated:
            return steps.astype(np.float64), np.where(np.isfinite(values), values, np.nan)
        low, high = min_max_columns(self.column, values)
        return self._points(steps, values, low, high)

    def lines(self, steps: np.ndarray, values: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """``series`` of each column of ``values`` (frames, series), decimated all at once."""
        if not self.decimated:
            return [self.series(steps, values[:, i]) for i in range(values.shape[1])]
        low, high = min_max_columns(self.column, values)
        return [self._points(steps, values[:, i], low[:, i], high[:, i]) for i in range(values.shape[1])]

    def _points(self, steps: np.ndarray, values: np.ndarray, low: np.ndarray,
                high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first, second = np.minimum(low, high), np.maximum(low, high)
        rows = np.stack([first, second], axis=1)
        keep = np.stack([np.ones_like(first, dtype=bool), second != first], axis=1)
        rows, keep = rows.reshape(-1), keep.reshape(-1)
        column_start = np.repeat(self.starts, 2)[keep]  # each point's column's first row
        rows = rows[keep]
        empty = rows < 0
        index = np.where(empty, column_start, rows)
        return steps[index].astype(np.float64), np.where(empty, np.nan, values[index])


def draw_norms(ax: Axes, data: PlotData, cols: Columns, colours: np.ndarray) -> None:
    """Each layer's gradient norm over steps on a log axis; zeros at ``zero_floor``; the first alarm marked."""
    ax.set_yscale("log")
    floor = zero_floor(data.norms)
    drawn_any = False
    for layer, (x, y) in enumerate(cols.lines(data.steps, data.norms)):
        y = np.where(y <= 0, floor, y)
        drawn_any = drawn_any or bool(np.isfinite(y).any())
        ax.plot(x, y, color=colours[layer], linewidth=0.9 if data.layer_count <= 20 else 0.6,
                gid=f"norm-{layer}")
    finite = np.isfinite(data.norms)
    if (finite & (data.norms <= 0)).any():
        ax.axhline(floor, color="0.45", linestyle=":", linewidth=1.0, gid="zero-floor")
        ax.annotate("0 (and below)", (0.0, floor), xycoords=("axes fraction", "data"), xytext=(3, 3),
                    textcoords="offset points", fontsize="x-small", color="0.35")
    if not drawn_any:
        ax.set_ylim(floor / 10, 1.0)
    first = first_alarm_step(data)
    if first is not None:
        ax.axvline(first, color=ALARM_STYLE["nan"][1], linestyle="--", linewidth=1.0, gid="first-alarm")
        ax.annotate(f"first NaN/Inf: step {first}", (first, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(4, -12), textcoords="offset points", fontsize="small", color=ALARM_STYLE["nan"][1])
    ax.set_ylabel("gradient norm")
    ax.grid(True, which="major", alpha=0.3)
    draw_legend(ax, data.layer_names, colours)


def draw_legend(ax: Axes, names: tuple[str, ...], colours: np.ndarray) -> None:
    """A legend of at most ``MAX_LEGEND_ENTRIES`` entries, outside the axes on the right."""
    from matplotlib.lines import Line2D

    groups = legend_groups(len(names))
    handles, labels = [], []
    for first, last in groups:
        colour = colours[(first + last) // 2]
        handles.append(Line2D([], [], color=colour, linewidth=2.5 if first != last else 1.5))
        if first == last:
            labels.append(short_name(names[first]))
        else:
            labels.append(f"{first}–{last}: {short_name(names[first], 18)} … {short_name(names[last], 18)}")
    title = "layer" if len(groups) == len(names) else f"layers (index), {len(names)} in {len(groups)} groups"
    ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
              title_fontsize="small", frameon=False)


def draw_alarms(ax: Axes, data: PlotData, max_markers: int) -> None:
    """One marker per NaN/Inf alarm at its step and layer; above ``max_markers`` alarms, each run of
    consecutive alarms of one layer and kind is a bar from its first to its last step, marked at its start."""
    from matplotlib.collections import LineCollection

    decimated = data.alarm_count > max_markers
    if decimated:
        layer, first, last, code = alarm_runs(data.alarm_kind)
    for kind, value in ALARM_CODES.items():
        marker, colour = ALARM_STYLE[kind]
        if decimated:
            pick = code == value
            rows, layers = first[pick], layer[pick]
            ends = last[pick]
            segments = np.stack([np.stack([data.steps[rows], layers], axis=1),
                                 np.stack([data.steps[ends], layers], axis=1)], axis=1).astype(np.float64)
            if segments.shape[0]:
                ax.add_collection(LineCollection(segments, colors=colour, linewidths=2.0, gid=f"alarm-runs-{kind}"))
        else:
            rows, layers = np.nonzero(data.alarm_kind == value)
        if rows.size:
            ax.scatter(data.steps[rows], layers, marker=marker, color=colour, s=18, linewidths=1.0,
                       label=f"{kind.replace('nan', 'NaN').replace('inf', 'Inf')} "
                             f"({int(np.count_nonzero(data.alarm_kind == value))})",
                       gid=f"alarms-{kind}", zorder=3)
    ax.set_ylim(data.layer_count - 0.5, -0.5)
    if data.layer_count <= MAX_NAMED_LAYERS:
        ax.set_yticks(range(data.layer_count), [short_name(n, 16) for n in data.layer_names], fontsize="x-small")
    else:
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))
        ax.set_ylabel("layer")
    ax.grid(True, axis="x", alpha=0.3)
    title = "NaN/Inf alarms" + (" (runs of consecutive alarms as bars)" if decimated else "")
    ax.legend(title=title, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title_fontsize="small",
              frameon=False)


def draw_loss_lr(ax: Axes, data: PlotData, cols: Columns) -> None:
    """The loss (left axis) and the learning rate (its own axis on the right), where the run has them."""
    drawn: list[Any] = []
    target = ax
    for name, values, colour, style in (("loss", data.loss, "black", "-"), ("learning rate", data.lr,
                                                                            "tab:orange", "--")):
        if not np.isfinite(values).any():
            continue
        if drawn:
            target = ax.twinx()
        x, y = cols.series(data.steps, values)
        (line,) = target.plot(x, y, color=colour, linestyle=style, linewidth=1.0, label=name,
                              gid="loss" if name == "loss" else "lr")
        target.set_ylabel(name, color=colour)
        finite = values[np.isfinite(values)]
        if finite.min() > 0 and finite.max() / finite.min() >= 100:
            target.set_yscale("log")
        drawn.append(line)
    ax.legend(drawn, [line.get_label() for line in drawn], loc="upper left", fontsize="small", framealpha=0.8)
    ax.grid(True, alpha=0.3)


def draw_piano_roll(ax: Axes, data: PlotData, cols: Columns, colours: np.ndarray) -> None:
    """What the preset plays: one bar per note at its pitch, from its start for its length, in its layer's
    colour; decimated, one bar per pixel column and layer from its lowest to its highest note."""
    from matplotlib.collections import PolyCollection

    if cols.decimated:
        high = np.maximum.reduceat(data.note_pitch, cols.starts, axis=0)  # NO_NOTE (-1) where none sounds
        low = np.minimum.reduceat(np.where(data.note_pitch == NO_NOTE, np.int8(127), data.note_pitch), cols.starts,
                                  axis=0)
        used, layer = np.nonzero(high != NO_NOTE)
        first = float(data.steps[0])
        width = (float(data.steps[-1]) - first + 1) / cols.columns
        x0 = first + cols.column[cols.starts[used]] * width
        verts = _rectangles(x0, x0 + width, low[used, layer] - 0.4, high[used, layer] + 0.4)
        gid = "note-ranges"
    else:
        layer, start, note = data.note_starts()
        end = start + np.maximum(data.note_length_steps[layer], 1e-3)
        verts = _rectangles(start, end, note - 0.4, note + 0.4)
        gid = "notes"
    if cols.decimated:  # bars a pixel column wide: no edges needed, and no antialiasing to blend them
        bars = PolyCollection(verts, facecolors=colours[layer], edgecolors="none", antialiaseds=False, gid=gid)
    else:  # edges in the face colour keep notes shorter than a pixel (perone2019's 10 ms in 60 ms) visible
        bars = PolyCollection(verts, facecolors=colours[layer], edgecolors=colours[layer], linewidths=0.5, gid=gid)
    ax.add_collection(bars)
    ax.autoscale_view()
    played = data.note_pitch[data.note_pitch != NO_NOTE]
    if played.size:
        low_note, high_note = int(played.min()), int(played.max())
        ax.set_ylim(low_note - 1.5, high_note + 1.5)
        cs = [n for n in range(low_note - 1, high_note + 2) if n % 12 == 0]
        ticks = cs if len(cs) >= 2 else sorted({low_note, high_note})
        ax.set_yticks(ticks, [note_name(n) for n in ticks])
    ax.set_ylabel(f"note ({data.mapping_name})")
    ax.grid(True, axis="y", alpha=0.3)


def _rectangles(x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """Rectangles as (n, 4, 2) vertices for a ``PolyCollection``."""
    x0, x1 = np.broadcast_arrays(np.asarray(x0, dtype=np.float64), np.asarray(x1, dtype=np.float64))
    y0, y1 = np.broadcast_arrays(np.asarray(y0, dtype=np.float64), np.asarray(y1, dtype=np.float64))
    return np.stack([np.stack([x0, y0], -1), np.stack([x1, y0], -1), np.stack([x1, y1], -1),
                     np.stack([x0, y1], -1)], axis=1)
