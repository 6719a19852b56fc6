"""Presets: built-ins load by name, every kind of mistake names the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import PresetError
from bridge.presets import builtin_names, load_preset


def write(tmp_path: Path, text: str, name: str = "mine.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_builtin_presets_load_by_name() -> None:
    assert {"perone2019", "pentatonic", "daw"} <= set(builtin_names())
    perone = load_preset("perone2019")
    assert (perone.layout, perone.note_s, perone.gap_s) == ("sequential", 0.01, 0.02)
    assert (perone.mode, perone.base_hz, perone.hz_per_unit) == ("linear_hz", 200.0, 100.0)
    assert (perone.sample_rate, perone.channels, perone.amplitude) == (44100, 1, 0.1)
    assert (perone.attack_s, perone.release_s, perone.phase) == (0.0, 0.0, "reset")
    # 4 layers: 4 tones of 10 ms then 20 ms of silence = 60 ms per step
    assert perone.seconds_per_step(4) == pytest.approx(0.06)
    daw = load_preset("daw")
    assert daw.seconds_per_step(7) == pytest.approx(60 / 120 / 4)


def test_preset_loads_by_path(tmp_path: Path) -> None:
    path = write(tmp_path, '[preset]\nname = "x"\n[timing]\nlayout = "chord"\nstep_s = 0.5\nnote_s = 0.25\n')
    preset = load_preset(path)
    assert (preset.name, preset.step_s, preset.seconds_per_step(3)) == ("x", 0.5, 0.5)
    assert load_preset(str(path)).note_s == 0.25


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(PresetError) as info:
        load_preset("pentatonc")
    message = str(info.value)
    assert 'unknown mapping preset "pentatonc"' in message
    assert 'did you mean "pentatonic"?' in message
    assert "perone2019" in message and "daw" in message


def test_unknown_key_names_file_key_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "[sound]\nsmaple_rate = 44100\n")
    with pytest.raises(PresetError) as info:
        load_preset(path)
    message = str(info.value)
    assert str(path) in message
    assert "[sound] smaple_rate" in message
    assert 'did you mean "sample_rate"?' in message


def test_unknown_table(tmp_path: Path) -> None:
    path = write(tmp_path, "[sounds]\namplitude = 0.1\n")
    with pytest.raises(PresetError, match=r"\[sounds\].*unknown table.*did you mean \[sound\]\?"):
        load_preset(path)


def test_wrong_type_says_what_was_received(tmp_path: Path) -> None:
    path = write(tmp_path, '[sound]\nsample_rate = "44100"\n')
    with pytest.raises(PresetError) as info:
        load_preset(path)
    message = str(info.value)
    assert "[sound] sample_rate = '44100'" in message
    assert "expected an integer in [8000, 192000] Hz, got a string '44100'" in message
    assert "without quotes" in message


def test_out_of_range_value(tmp_path: Path) -> None:
    path = write(tmp_path, "[sound]\namplitude = 1.5\n")
    with pytest.raises(PresetError, match=r"amplitude = 1.5.*a number in \(0, 1\]"):
        load_preset(path)


def test_unknown_scale_suggests_the_close_one(tmp_path: Path) -> None:
    path = write(tmp_path, '[pitch]\nscale = "pentatonic"\n')
    with pytest.raises(PresetError) as info:
        load_preset(path)
    message = str(info.value)
    assert '"major_pentatonic"' in message and '"minor_pentatonic"' in message
    assert "Fix: did you mean" in message


def test_unreadable_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[sound\namplitude = \n")
    with pytest.raises(PresetError) as info:
        load_preset(path)
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)
    assert "line 1" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match="no such preset file"):
        load_preset(tmp_path / "absent.toml")


def test_key_of_the_other_pitch_mode_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[pitch]\nmode = "linear_hz"\nscale = "major"\n')
    with pytest.raises(PresetError, match=r'\[pitch\] scale: applies only when mode = "scale"'):
        load_preset(path)


def test_note_longer_than_step_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[timing]\nlayout = "chord"\nstep_s = 0.1\nnote_s = 0.2\n')
    with pytest.raises(PresetError, match=r"make note_s <= 0.1"):
        load_preset(path)


def test_envelope_longer_than_note_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[timing]\nnote_s = 0.01\n[sound]\nattack_s = 0.008\nrelease_s = 0.005\n')
    with pytest.raises(PresetError, match="attack_s/release_s"):
        load_preset(path)


def test_log_curve_needs_positive_low_end(tmp_path: Path) -> None:
    path = write(tmp_path, '[pitch]\ncurve = "log"\nrange = [0, 10]\n')
    with pytest.raises(PresetError, match="a log curve needs low > 0"):
        load_preset(path)


def test_max_frequency_must_be_below_nyquist(tmp_path: Path) -> None:
    path = write(tmp_path, "[sound]\nsample_rate = 22050\nmax_frequency_hz = 12000.0\n")
    with pytest.raises(PresetError, match=r"Nyquist frequency \(11025 Hz\)"):
        load_preset(path)


def test_bad_list_item_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, '[sound]\nwaveforms = ["sine", "sqare"]\n')
    with pytest.raises(PresetError, match=r'item 1 is not one of "sine".*did you mean "square"'):
        load_preset(path)


def test_non_preset_argument_type() -> None:
    with pytest.raises(TypeError, match="preset name or a path"):
        load_preset(42)  # type: ignore[arg-type]


def test_live_midi_and_osc_tables(tmp_path: Path) -> None:
    path = write(tmp_path, '[midi]\nmode = "cc14"\ncc = 7\n[live]\nevery = 4\nmax_fps = 30\naggregate = "mean"\n'
                           "[osc]\nlatency_s = 0.2\n")
    preset = load_preset(path)
    assert (preset.midi_mode, preset.cc, preset.every, preset.max_fps, preset.aggregate, preset.osc_latency_s) == (
        "cc14", 7, 4, 30.0, "mean", 0.2)


def test_fourteen_bit_control_needs_a_coarse_controller(tmp_path: Path) -> None:
    path = write(tmp_path, '[midi]\nmode = "cc14"\ncc = 40\n')
    with pytest.raises(PresetError, match=r"\[midi\] cc: 14-bit control needs a coarse controller 0–31"):
        load_preset(path)


def test_live_every_must_be_positive(tmp_path: Path) -> None:
    path = write(tmp_path, "[live]\nevery = 0\n")
    with pytest.raises(PresetError, match=r"\[live\] every = 0: expected an integer in \[1, 1000000\] steps"):
        load_preset(path)


def test_a_checkout_on_the_path_reads_its_own_presets_not_an_installed_copy(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    checkout = tmp_path / "checkout"
    shutil.copytree(root / "bridge", checkout / "bridge", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "mappings", checkout / "mappings")
    daw = checkout / "mappings" / "daw.toml"
    daw.write_text(daw.read_text(encoding="utf-8").replace("tempo_bpm = 120.0", "tempo_bpm = 96.0"),
                   encoding="utf-8")
    code = "from bridge.presets import load_preset; print(load_preset('daw').tempo_bpm)"
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True,
                           env={"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin"})
    assert shown.stdout.strip() == "96.0"
