"""``gradbridge plot``: checked from the figure's own objects, against the MIDI file read back by mido,
and from the written files' headers."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import mido
import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="gradbridge plot needs matplotlib: pip install -e \".[plot]\"")

from bridge.cli import main  # noqa: E402
from bridge.frames import Frame, RunInfo  # noqa: E402
from bridge.plot import build_figure, plot_run, title_of  # noqa: E402
from bridge.plot_data import ALARM_CODES, read_plot_data  # noqa: E402
from bridge.plot_panels import MAX_LEGEND_ENTRIES, layer_colours  # noqa: E402
from bridge.runcsv import write_csv  # noqa: E402
from bridge.runlog import RunLogWriter  # noqa: E402

NAMES = ("conv1", "conv2", "fc1", "fc2")
FIRST_STEP = 5


def small_norms() -> tuple[np.ndarray, np.ndarray]:
    """40 steps of 4 layers: steps 5..44 with 30 missing (a gap), a zero, a NaN burst, an Inf and a -Inf."""
    steps = np.array([s for s in range(FIRST_STEP, FIRST_STEP + 41) if s != 30])
    rng = np.random.default_rng(5)
    norms = np.exp(rng.normal(0.0, 1.0, size=(steps.size, 4))).astype(np.float32).astype(np.float64)
    norms[3, 1] = 0.0
    norms[10, 2] = np.inf
    norms[12, 0] = -np.inf
    norms[30:34, :] = np.nan
    norms[36, 3] = np.nan
    norms[20, 0] = np.float32(0.03)  # the smallest positive norm (as the run log's float32 keeps it): floor 1e-3
    return steps, norms


def logged_step(steps: np.ndarray, position: float, tolerance: float) -> float:
    """The step number on the plot's axis of a musical position in the MIDI file (the p-th step logged is
    at position p), with the fraction into the step kept."""
    index = math.floor(position + tolerance)
    return float(steps[index]) + position - index


def write_log(path: Path, steps: np.ndarray, norms: np.ndarray, names: tuple[str, ...] = NAMES,
              mapping: str = "perone2019") -> Path:
    with RunLogWriter(path, RunInfo(names, {"mapping": mapping})) as writer:
        for step, row in zip(steps.tolist(), norms):
            writer.append(Frame(step, 1000.0 + step, row, loss=2.5 / (1 + step), lr=0.1 * 0.97**step))
    return path


@pytest.fixture
def small_run(tmp_path: Path) -> Path:
    return write_log(tmp_path / "small.gbrun", *small_norms())


def axes_named(figure, label: str):  # type: ignore[no-untyped-def]
    (ax,) = [ax for ax in figure.axes if ax.get_label() == label]
    return ax


def artist(ax, gid: str):  # type: ignore[no-untyped-def]
    found = [a for a in ax.get_children() if a.get_gid() == gid]
    assert len(found) == 1, f"{len(found)} artists with gid {gid}"
    return found[0]


def drawn_notes(figure, layer_count: int) -> list[tuple[int, float, int]]:  # type: ignore[no-untyped-def]
    """(layer, start on the step axis, MIDI note) of every bar in the piano roll; layer told by its colour."""
    notes = artist(axes_named(figure, "roll"), "notes")
    colours = layer_colours(layer_count)
    out = []
    for path, face in zip(notes.get_paths(), notes.get_facecolors()):
        (layer,) = [i for i, c in enumerate(colours) if np.allclose(c, face)]
        x0, y0 = path.vertices[0]
        y1 = path.vertices[2][1]
        out.append((layer, float(x0), int(round((y0 + y1) / 2))))
    return out


def midi_notes(path: Path) -> tuple[dict[str, list[tuple[float, int]]], float]:
    """Each track's note-ons as (seconds, note), by track name, and the seconds one tick lasts."""
    midi = mido.MidiFile(str(path))
    tempo = next(m.tempo for m in midi.tracks[0] if m.type == "set_tempo")
    tick_s = tempo / 1e6 / midi.ticks_per_beat
    tracks: dict[str, list[tuple[float, int]]] = {}
    for track in midi.tracks[1:]:
        tick, notes = 0, []
        for message in track:
            tick += message.time
            if message.type == "note_on" and message.velocity > 0:
                notes.append((tick * tick_s, message.note))
        tracks[track.name] = notes
    return tracks, tick_s


@pytest.mark.parametrize("preset", ["perone2019", "pentatonic", "daw"])
def test_piano_roll_holds_the_notes_of_the_midi_file(small_run: Path, tmp_path: Path, preset: str) -> None:
    mid = tmp_path / f"{preset}.mid"
    assert main(["midi", str(small_run), "-o", str(mid), "-m", preset]) == 0
    tracks, tick_s = midi_notes(mid)
    data = read_plot_data(small_run, preset)
    figure = build_figure(data, width_px=1200, height_px=800)
    step_s = data.seconds_per_step
    tolerance = tick_s / step_s  # half a tick either way, in steps, as the file rounds times to ticks
    steps, norms = small_norms()
    # each logged step is one musical step in the file: the p-th step logged sounds at p x step_s
    from_midi = sorted((layer, logged_step(steps, seconds / step_s, tolerance), note)
                       for layer, name in enumerate(NAMES) for seconds, note in tracks[name])
    drawn = sorted(drawn_notes(figure, len(NAMES)))
    assert len(drawn) == len(from_midi) == int(np.isfinite(norms).sum())
    for (layer, x, note), (midi_layer, midi_x, midi_note) in zip(drawn, from_midi):
        assert (layer, note) == (midi_layer, midi_note)
        assert abs(x - midi_x) <= tolerance
        assert math.floor(x) == math.floor(midi_x + tolerance)  # the same start step
    assert {math.floor(x) for _, x, _ in drawn} <= set(steps.tolist())


def test_alarm_markers_sit_on_the_alarm_steps_and_match_the_midi_alarms(small_run: Path, tmp_path: Path) -> None:
    mid = tmp_path / "run.mid"
    assert main(["midi", str(small_run), "-o", str(mid)]) == 0  # the run's own preset, perone2019
    tracks, tick_s = midi_notes(mid)
    data = read_plot_data(small_run)
    ax = axes_named(build_figure(data, width_px=1200, height_px=800), "alarms")
    steps, norms = small_norms()
    drawn = {kind: sorted(map(tuple, artist(ax, f"alarms-{kind}").get_offsets().data.tolist()))
             for kind in ("nan", "+inf", "-inf")}
    expected = {kind: sorted((float(steps[r]), float(layer)) for r, layer in zip(*np.nonzero(test(norms))))
                for kind, test in (("nan", np.isnan), ("+inf", lambda a: np.isposinf(a)),
                                   ("-inf", lambda a: np.isneginf(a)))}
    assert drawn == expected
    assert len(drawn["nan"]) == 4 * 4 + 1
    # the MIDI file's alarms track: perone2019 plays layer i at i x 10 ms into the 60 ms step; NaN note 49, Inf 52
    step_s = data.seconds_per_step
    from_midi = []
    for seconds, note in tracks["alarms"]:
        position = math.floor(seconds / step_s + tick_s / step_s)  # within half a tick of the step's start or later
        from_midi.append((int(steps[position]), round((seconds - position * step_s) / 0.01), note))
    from_midi.sort()
    ours = sorted((int(x), int(y), 49 if kind == "nan" else 52) for kind, points in drawn.items() for x, y in points)
    assert from_midi == ours


def test_one_line_per_layer_holds_its_norms_zeros_on_the_floor(small_run: Path) -> None:
    figure = build_figure(read_plot_data(small_run), width_px=1200, height_px=800)
    ax = axes_named(figure, "norms")
    assert ax.get_yscale() == "log"
    steps, norms = small_norms()
    for layer in range(4):
        line = artist(ax, f"norm-{layer}")
        assert np.array_equal(line.get_xdata(), steps.astype(np.float64))
        expected = np.where(np.isfinite(norms[:, layer]), norms[:, layer], np.nan)
        expected = np.where(expected == 0.0, 1e-3, expected)  # a decade under the smallest positive, 0.03
        assert np.array_equal(line.get_ydata(), expected, equal_nan=True)
    assert artist(ax, "zero-floor").get_ydata()[0] == 1e-3
    assert artist(ax, "first-alarm").get_xdata()[0] == steps[10]  # the +Inf at row 10


def test_loss_and_learning_rate_on_their_own_axes(small_run: Path) -> None:
    figure = build_figure(read_plot_data(small_run), width_px=1200, height_px=800)
    ax = axes_named(figure, "loss")
    steps, _ = small_norms()
    loss = artist(ax, "loss")
    assert np.array_equal(loss.get_xdata(), steps) and np.allclose(loss.get_ydata(), 2.5 / (1 + steps))
    (lr,) = [line for other in figure.axes if other is not ax and other.bbox.bounds == ax.bbox.bounds
             for line in other.lines if line.get_gid() == "lr"]
    assert np.allclose(lr.get_ydata(), 0.1 * 0.97**steps)
    assert lr.axes.get_yaxis().get_label().get_text() == "learning rate"


def test_a_csv_without_loss_has_no_loss_panel_and_no_alarm_panel_without_alarms(tmp_path: Path) -> None:
    csv = tmp_path / "norms.csv"
    csv.write_text("step,a,b\n0,1.0,2.0\n1,0.5,4.0\n2,0.25,8.0\n")
    figure = build_figure(read_plot_data(csv), width_px=800, height_px=600)
    assert [ax.get_label() for ax in figure.axes] == ["norms", "roll"]
    assert figure.get_suptitle() == "norms.csv: preset pentatonic, 2 layers, 3 steps, no NaN/Inf alarms"


def test_title_names_run_preset_layers_steps_and_alarms(small_run: Path) -> None:
    data = read_plot_data(small_run, "daw")
    figure = build_figure(data, width_px=1200, height_px=800)
    assert figure.get_suptitle() == title_of(data)
    assert figure.get_suptitle() == "small.gbrun: preset daw, 4 layers, 40 steps, 19 NaN/Inf alarms from step 15"


def decimation_run(tmp_path: Path, steps_count: int = 5000, layers: int = 3) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(9)
    steps = np.arange(100, 100 + steps_count)
    norms = np.exp(rng.normal(0.0, 2.0, size=(steps_count, layers)))
    norms[rng.choice(steps_count, 40, replace=False), 0] = np.nan  # scattered alarms, one step each
    norms[4000:4300, 1] = np.inf  # a long run of alarms
    path = tmp_path / "long.csv"
    write_csv(path, RunInfo(tuple(f"l{i}" for i in range(layers))),
              (Frame(int(s), 0.0, row) for s, row in zip(steps, norms)))
    return path, steps, norms


def test_long_runs_keep_each_columns_lowest_and_highest_norm(tmp_path: Path) -> None:
    path, steps, norms = decimation_run(tmp_path)
    width = 400
    ax = axes_named(build_figure(read_plot_data(path), width_px=width, height_px=600), "norms")
    column_of_step = {int(s): (int(s) - 100) * width // 5000 for s in steps}  # 12.5 steps a pixel column
    row_of_step = {int(s): i for i, s in enumerate(steps)}
    for layer in range(3):
        line = artist(ax, f"norm-{layer}")
        x, y = line.get_xdata(), line.get_ydata()
        assert len(x) <= 2 * width
        assert (np.diff(x) > 0).all()  # in step order, never a point twice
        got: dict[int, list[float]] = {}
        for step, value in zip(x.astype(int).tolist(), y.tolist()):
            if not math.isnan(value):
                assert value == norms[row_of_step[step], layer]  # a real point of the run
                got.setdefault(column_of_step[step], []).append(value)
        for column in range(width):
            values = norms[[row_of_step[s] for s, c in column_of_step.items() if c == column], layer]
            finite = values[np.isfinite(values)]
            expected = sorted({finite.min(), finite.max()}) if finite.size else []
            assert sorted(got.get(column, [])) == expected


def test_long_runs_never_drop_an_alarm(tmp_path: Path) -> None:
    path, steps, norms = decimation_run(tmp_path)
    data = read_plot_data(path)
    nan_rows, inf_rows = np.flatnonzero(np.isnan(norms[:, 0])), np.flatnonzero(np.isinf(norms[:, 1]))
    # as markers, one per alarm (340 alarms, under the default limit)
    ax = axes_named(build_figure(data, width_px=400, height_px=600), "alarms")
    assert sorted(artist(ax, "alarms-nan").get_offsets()[:, 0].tolist()) == steps[nan_rows].tolist()
    assert sorted(artist(ax, "alarms-+inf").get_offsets()[:, 0].tolist()) == steps[inf_rows].tolist()
    # as runs, above the marker limit: every alarm step lies in exactly one bar of its layer and kind
    ax = axes_named(build_figure(data, width_px=400, height_px=600, max_alarm_markers=10), "alarms")
    for kind, layer, rows in (("nan", 0, nan_rows), ("+inf", 1, inf_rows)):
        covered = Counter()
        for (x0, y0), (x1, y1) in artist(ax, f"alarm-runs-{kind}").get_segments():
            assert y0 == y1 == layer
            covered.update(range(int(x0), int(x1) + 1))
        assert sorted(covered) == steps[rows].tolist() and set(covered.values()) == {1}
    assert len(artist(ax, "alarm-runs-+inf").get_segments()) == 1


def test_long_runs_piano_roll_spans_each_columns_notes(tmp_path: Path) -> None:
    path, _, _ = decimation_run(tmp_path, steps_count=3000, layers=2)
    data = read_plot_data(path)
    roll = artist(axes_named(build_figure(data, width_px=300, height_px=600), "roll"), "note-ranges")
    colours = layer_colours(2)
    bars = {}
    for bar, face in zip(roll.get_paths(), roll.get_facecolors()):
        (layer,) = [i for i, c in enumerate(colours) if np.allclose(c, face)]
        column = int(round((bar.vertices[0][0] - 100) / 10))  # 3000 steps in 300 columns: 10 a column
        bars[(column, layer)] = (round(bar.vertices[0][1] + 0.4), round(bar.vertices[2][1] - 0.4))
    for layer in range(2):
        for column in range(300):
            pitches = data.note_pitch[column * 10:(column + 1) * 10, layer]
            played = pitches[pitches >= 0]
            if played.size:
                assert bars[(column, layer)] == (played.min(), played.max())
            else:
                assert (column, layer) not in bars


@pytest.mark.parametrize("width, height, dpi", [(900, 640, 100), (1001, 577, 96)])
def test_png_has_the_asked_pixel_size(small_run: Path, tmp_path: Path, width: int, height: int, dpi: int) -> None:
    out = tmp_path / "run.png"
    assert main(["plot", str(small_run), "-o", str(out), "--width", str(width), "--height", str(height),
                 "--dpi", str(dpi)]) == 0
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    assert struct.unpack(">II", head[16:24]) == (width, height)


def test_svg_and_pdf_by_suffix(small_run: Path, tmp_path: Path) -> None:
    assert main(["plot", str(small_run), "-o", str(tmp_path / "run.svg"), "--width", "800", "--height", "500"]) == 0
    svg = (tmp_path / "run.svg").read_text()
    assert '<svg' in svg and 'width="576pt" height="360pt"' in svg  # 800 x 500 px at 100 dpi = 8 x 5 in
    assert main(["plot", str(small_run), "-o", str(tmp_path / "run.pdf")]) == 0
    assert (tmp_path / "run.pdf").read_bytes()[:5] == b"%PDF-"


def test_bad_suffix_and_size_are_named(small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plot", str(small_run), "-o", str(tmp_path / "run.jpg")]) == 1
    assert "'.jpg'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="width_px must be from 200 to 20000; got 50"):
        plot_run(small_run, tmp_path / "run.png", width_px=50)
    with pytest.raises(TypeError, match="dpi must be an int"):
        plot_run(small_run, tmp_path / "run.png", dpi=72.5)  # type: ignore[arg-type]
    assert not (tmp_path / "run.png").exists()


def test_legend_of_four_layers_names_each(small_run: Path) -> None:
    legend = axes_named(build_figure(read_plot_data(small_run), width_px=1200, height_px=800), "norms").get_legend()
    assert [t.get_text() for t in legend.get_texts()] == list(NAMES)


def test_legend_of_128_layers_is_grouped(tmp_path: Path) -> None:
    names = tuple(f"blocks.{i}.mlp.fc" for i in range(128))
    rng = np.random.default_rng(2)
    run = write_log(tmp_path / "deep.gbrun", np.arange(30), np.exp(rng.normal(size=(30, 128))), names, "daw")
    figure = build_figure(read_plot_data(run), width_px=1600, height_px=1000)
    ax = axes_named(figure, "norms")
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(texts) == MAX_LEGEND_ENTRIES == 12
    assert texts[0] == "0–10: blocks.0.mlp.fc … blocks.10.mlp.fc"
    assert texts[-1] == "117–127: blocks.117.mlp.fc … blocks.127.mlp.fc"
    assert len([line for line in ax.lines if line.get_gid().startswith("norm-")]) == 128
    assert figure.get_suptitle() == "deep.gbrun: preset daw, 128 layers, 30 steps, no NaN/Inf alarms"


def test_plot_never_imports_torch(small_run: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from bridge.cli import main
        assert main(["plot", {str(small_run)!r}, "-o", {str(tmp_path / "run.png")!r}]) == 0
        print("torch imported:", "torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch imported: False" in out.stdout
    assert (tmp_path / "run.png").stat().st_size > 10_000


def test_without_matplotlib_one_line_names_the_extra(small_run: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        sys.modules["matplotlib"] = None  # as if it were not installed: importing it raises ImportError
        from bridge.cli import main
        sys.exit(main(["plot", {str(small_run)!r}, "-o", {str(tmp_path / "run.png")!r}]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [('gradbridge: error: gradbridge plot needs matplotlib, which is not '
                                        'installed; install it with: pip install "gradbridge[plot]"')]
    assert not (tmp_path / "run.png").exists()


def test_alarm_codes_cover_every_alarm_kind() -> None:
    assert set(ALARM_CODES) == {"nan", "+inf", "-inf"}


def test_sequential_notes_sit_in_their_step_one_after_another(tmp_path: Path) -> None:
    # perone2019 with 2 layers: a step lasts 2 x 10 ms + 20 ms = 40 ms; layer 1 starts 10 ms (a quarter) in
    csv = tmp_path / "far.csv"
    csv.write_text("step,a,b\n1000000000000,1.0,2.0\n1000000000001,0.5,4.0\n")
    data = read_plot_data(csv, "perone2019")
    assert data.seconds_per_step == pytest.approx(0.04)
    assert data.note_offset_steps.tolist() == pytest.approx([0.0, 0.25])
    assert data.note_length_steps.tolist() == pytest.approx([0.25, 0.25])
    layer, start, pitch = data.note_starts()
    assert layer.tolist() == [0, 1, 0, 1]
    assert start.tolist() == pytest.approx([1e12, 1e12 + 0.25, 1e12 + 1, 1e12 + 1.25])
    # 200 Hz + 100 Hz per unit: 300, 400, 250, 600 Hz -> nearest MIDI notes 62, 67, 59, 74
    assert pitch.tolist() == [62, 67, 59, 74]


def test_an_empty_run_and_an_unknown_preset_are_clear_errors(small_run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("step,a,b\n")
    assert main(["plot", str(empty), "-o", str(tmp_path / "empty.png")]) == 1
    assert "empty.csv holds no steps; there is nothing to plot" in capsys.readouterr().err
    assert main(["plot", str(small_run), "-o", str(tmp_path / "run.png"), "--mapping", "no-such-preset"]) == 1
    assert "no-such-preset" in capsys.readouterr().err
    assert not (tmp_path / "empty.png").exists() and not (tmp_path / "run.png").exists()
