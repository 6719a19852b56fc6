"""Measure what a run sounds like from its files, as a listener's ear would: pitch by FFT from the WAV,
notes and alarms from the MIDI file (read with mido), loudness-weighted.

    from measure import wav_pitch, midi_notes, tone_pitches

``wav_pitch`` is the median over time of a WAV's pitch: in each window of 4096 samples (93 ms) that
sounds, the MIDI pitch below which half of the spectral energy between 50 Hz and 1250 Hz lies (loud
voices weigh more within a moment, as they do for the ear; the alarm and spike beeps, at 1320 Hz and
above, are left out), then the median of those over the windows. ``tone_pitches`` reads
``perone2019``'s 10 ms tones one by one.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np

BAND_HZ = (50.0, 1250.0)  #: the notes' band: below the alarm (1320, 1760 Hz) and spike (2217, 2960 Hz) beeps
PERCUSSION_CHANNEL = 9  #: General MIDI percussion (channel 10), where alarms and spikes sound
WINDOW = 4096  #: samples per FFT window (93 ms at 44.1 kHz: 10.8 Hz bins, a semitone apart above 180 Hz)


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV as float64 mono samples in [-1, 1] (channels averaged) and its sample rate."""
    with wave.open(str(path)) as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * f.getsampwidth()}-bit samples")
        channels, rate = f.getnchannels(), f.getframerate()
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float64) / 32767.0
    return data.reshape(-1, channels).mean(axis=1), rate


def frequency_to_pitch(frequency_hz: np.ndarray | float) -> np.ndarray:
    """Frequency in Hz → MIDI pitch (69 = A4 = 440 Hz), not rounded."""
    return 69.0 + 12.0 * np.log2(np.asarray(frequency_hz, dtype=np.float64) / 440.0)


def window_pitches(path: Path) -> np.ndarray:
    """Each sounding window's energy-median MIDI pitch (see the module docstring), in time order."""
    samples, rate = read_wav(path)
    usable = samples.shape[0] // WINDOW * WINDOW
    frames = samples[:usable].reshape(-1, WINDOW) * np.hanning(WINDOW)
    frequency = np.fft.rfftfreq(WINDOW, 1.0 / rate)
    band = (frequency >= BAND_HZ[0]) & (frequency <= BAND_HZ[1])
    energy = (np.abs(np.fft.rfft(frames, axis=1)) ** 2)[:, band]
    totals = energy.sum(axis=1)
    sounding = totals > 1e-6 * totals.max(initial=0.0)  # windows with notes (silence between steps left out)
    cumulative = np.cumsum(energy[sounding], axis=1)
    middle = (cumulative < cumulative[:, -1:] / 2.0).sum(axis=1)
    return frequency_to_pitch(frequency[band][middle])


def wav_pitch(path: Path) -> float:
    """The median over time of a WAV's pitch, as a MIDI pitch (see the module docstring); NaN when silent."""
    pitches = window_pitches(path)
    return float(np.median(pitches)) if pitches.size else float("nan")


def peak(path: Path) -> float:
    """The largest sample magnitude of a 16-bit WAV, 0–1 (1.0: full scale)."""
    with wave.open(str(path)) as f:
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    return float(np.abs(data.astype(np.int64)).max(initial=0)) / 32767.0


def tone_pitches(path: Path, layers: int) -> np.ndarray:
    """Pitch in Hz of every tone of a ``perone2019`` WAV (zero-padded FFT peak of each 10 ms slot), in time
    order: per step ``layers`` tones, then 20 ms of silence."""
    samples, rate = read_wav(path)
    tone = round(0.01 * rate)
    step = (layers + 2) * tone
    steps = samples.size // step
    slots = samples[: steps * step].reshape(steps, layers + 2, tone)[:, :layers].reshape(-1, tone)
    spectrum = np.abs(np.fft.rfft(slots * np.hanning(tone), n=16 * tone, axis=1))
    return np.argmax(spectrum, axis=1) * rate / (16 * tone)


@dataclass(frozen=True)
class MidiNotes:
    """A MIDI file's note-ons, read with mido: melodic notes (pitch, velocity) and percussion notes."""

    pitches: np.ndarray  #: melodic note-ons' MIDI notes
    velocities: np.ndarray  #: and their velocities
    percussion: dict[int, int]  #: channel 10 note → how many times it was struck
    tracks: list[str]  #: the track names, track 0 included
    markers: list[str]  #: the marker texts

    def median_pitch(self) -> float:
        """The velocity-weighted median of the melodic notes (NaN without notes)."""
        if self.pitches.size == 0:
            return float("nan")
        order = np.argsort(self.pitches, kind="stable")
        cumulative = np.cumsum(self.velocities[order].astype(np.float64))
        return float(self.pitches[order][np.searchsorted(cumulative, cumulative[-1] / 2.0)])


def midi_notes(path: Path) -> MidiNotes:
    """Read a MIDI file's note-ons (velocity > 0), per channel kind, with mido."""
    midi = mido.MidiFile(str(path))
    pitches, velocities, percussion, markers = [], [], {}, []
    for track in midi.tracks:
        for message in track:
            if message.type == "marker":
                markers.append(message.text)
            elif message.type == "note_on" and message.velocity > 0:
                if message.channel == PERCUSSION_CHANNEL:
                    percussion[message.note] = percussion.get(message.note, 0) + 1
                else:
                    pitches.append(message.note)
                    velocities.append(message.velocity)
    return MidiNotes(np.array(pitches, dtype=np.int64), np.array(velocities, dtype=np.int64), percussion,
                     [track.name for track in midi.tracks], markers)
