"""The voices: oscillators, envelopes and pan, pure NumPy; ``bridge.sinks.synth`` places them in time.

Waveforms (``bridge.events.WAVEFORMS``) all start at 0 and rise (the square at +1), amplitude 1, phase in
cycles: sine ``sin 2πx``, triangle, square and saw. Sample ``k = q·BLOCK + r`` of a note has phase
``coarse[q] + fine[r]`` cycles, so many notes of one length are computed at once by broadcasting, with
no per-sample Python: as a (notes, samples) array (``oscillator_rows``), or summed straight into
(channels, samples) when they start together (``chord_sum``); a chord of sines never even makes the
per-note array (``Σ g·sin(a + b) = Σ g·sin a·cos b + g·cos a·sin b``). Arrays are float32 unless stated.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from bridge.events import WAVEFORMS

__all__ = ["BLOCK", "WAVE_CODES", "Workspace", "apply_envelope", "chord_sum", "one_blas_thread", "oscillator_rows",
           "pan_gains"]

#: Samples per coarse phase step; notes are computed in whole blocks of this many samples.
BLOCK = 128
#: Waveform name -> the code ``oscillator_rows`` and ``chord_sum`` take: its index in ``WAVEFORMS``.
WAVE_CODES = {name: code for code, name in enumerate(WAVEFORMS)}
_SINE, _TRIANGLE, _SQUARE = WAVE_CODES["sine"], WAVE_CODES["triangle"], WAVE_CODES["square"]
# Per waveform code (see ``_waves``): phase offset in cycles, so that every waveform starts at 0 and rises
# (the square at +1), and the affine map from the computed row to the wave.
_OFFSETS = np.array([{"triangle": -0.25}.get(name, 0.0) for name in WAVEFORMS])
_SCALES = np.array([{"sine": 1.0, "triangle": -4.0, "square": 2.0, "saw": 2.0}[name] for name in WAVEFORMS])
_BIASES = np.array([{"triangle": 1.0, "square": -1.0}.get(name, 0.0) for name in WAVEFORMS])


def _block_phases(inc: np.ndarray, phase0: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Phase in cycles of sample ``k = q·BLOCK + r`` as ``coarse[q, note] + fine[note, r]`` (mod 1).

    Both parts are wrapped to [0, 1): ``coarse`` (blocks, notes), ``fine`` (notes, ``BLOCK``).
    """
    coarse = np.multiply.outer(np.arange(-(-count // BLOCK), dtype=np.float64) * BLOCK, inc)
    coarse += phase0
    fine = np.multiply.outer(inc, np.arange(BLOCK, dtype=np.float64))
    return coarse - np.floor(coarse), fine - np.floor(fine)


def _waves(codes: np.ndarray, inc: np.ndarray, phase0: np.ndarray, count: int, work: Workspace,
           final: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each note's oscillator up to an affine map: float32 rows ``(notes, count)`` and per-note ``scale``,
    ``bias`` such that ``wave = scale·row + bias``. ``codes`` must come sorted (one run per waveform).
    With ``final`` the rows are the waves themselves (scale 1, bias 0).

    The phase ``x = coarse + fine`` (one float32 addition, broadcast: no matrix product), then
    ``w = x - rint(x)`` in [-1/2, 1/2]; sine ``sin 2πw``, saw ``2w``, square ``2·[w >= 0] - 1``,
    triangle ``1 - 4|w|`` (w a quarter cycle early). Every step works in place on one scratch array.
    """
    coarse, fine = _block_phases(inc, phase0 + _OFFSETS[codes], count)
    (blocks, notes) = coarse.shape
    x3 = work.get("rows", (notes, blocks, BLOCK))
    np.add(coarse.T.astype(np.float32)[:, :, None], fine.astype(np.float32)[:, None, :], out=x3)
    x = x3.reshape(notes, -1)[:, :count]
    np.subtract(x, np.rint(x, out=work.get("wrapped", x.shape)), out=x)
    edges = (np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist()
    for low, high in zip([0] + edges, edges + [notes]):  # one run of rows per waveform
        code, w = int(codes[low]), x[low:high]
        if code == _SINE:
            w *= np.float32(2.0 * np.pi)
            np.sin(w, out=w)
        elif code == _SQUARE:
            if final:  # w is never -0.0 (x >= 0), so the sign of w is the square exactly
                np.copysign(np.float32(1.0), w, out=w)
            else:
                np.greater_equal(w, np.float32(0.0), out=w, casting="unsafe")
        elif code == _TRIANGLE:
            np.abs(w, out=w)
            if final:
                w *= np.float32(-4.0)
                w += np.float32(1.0)
        elif final:  # saw
            w *= np.float32(2.0)
    if final:
        return x, np.ones(notes), np.zeros(notes)
    return x, _SCALES[codes], _BIASES[codes]


def oscillator_rows(codes: np.ndarray, inc: np.ndarray, phase0: np.ndarray, count: int,
                    work: Workspace) -> np.ndarray:
    """Each note's oscillator, float32 ``(notes, count)``, amplitude 1, from phase ``phase0`` (cycles).

    ``codes`` (``WAVE_CODES`` values, sorted: one run per waveform), ``inc`` (frequency in cycles per
    sample) and ``phase0`` have one entry per note. The rows are a view into ``work``'s scratch memory:
    use them before the next call with the same ``work``.
    """
    return _waves(codes, inc, phase0, count, work, final=True)[0]


def chord_sum(codes: np.ndarray, inc: np.ndarray, phase0: np.ndarray, gains: np.ndarray, count: int,
              work: Workspace) -> np.ndarray:
    """Notes starting together, summed: float32 ``(channels, count)`` = ``Σ_i gains[:, i]·wave_i``.

    Sines need no per-note array: ``Σ g·sin 2π(a + b) = Σ (g·sin 2πa)·cos 2πb + (g·cos 2πa)·sin 2πb`` is
    one matrix product over (block, note) × (note, offset in block). The other waveforms are made as rows
    (see ``_waves``) and summed by a matrix product with the gains. ``codes`` must come sorted, sines first;
    ``inc`` and ``phase0`` as for ``oscillator_rows``, ``gains`` is float32 ``(channels, notes)``. Call it
    inside ``one_blas_thread()``.
    """
    sines = int(np.searchsorted(codes, _SINE, side="right"))
    parts = []
    if sines < codes.shape[0]:
        rows, scale, bias = _waves(codes[sines:], inc[sines:], phase0[sines:], count, work)
        others = gains[:, sines:]
        parts.append((others * scale).astype(np.float32) @ rows + (others @ bias).astype(np.float32)[:, None])
    if sines:
        coarse, fine = _block_phases(inc[:sines], phase0[:sines], count)
        (blocks, notes), channels = coarse.shape, gains.shape[0]
        a = (coarse * (2.0 * np.pi)).astype(np.float32)
        b = (fine * (2.0 * np.pi)).astype(np.float32)
        left = np.empty((channels, blocks, 2, notes), dtype=np.float32)
        np.multiply(np.sin(a), gains[:, None, :sines], out=left[:, :, 0, :])
        np.multiply(np.cos(a), gains[:, None, :sines], out=left[:, :, 1, :])
        right = np.empty((2, notes, BLOCK), dtype=np.float32)
        np.cos(b, out=right[0])
        np.sin(b, out=right[1])
        product = left.reshape(channels * blocks, 2 * notes) @ right.reshape(2 * notes, BLOCK)
        parts.append(product.reshape(channels, blocks * BLOCK)[:, :count])
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]


def one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """Hold NumPy's BLAS to one thread for a product (with threadpoolctl installed; otherwise a no-op).

    The chord products are small: a second BLAS thread gains little on an idle machine and costs several
    times over when the cores are busy with training, which is when the synth runs.
    """
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _BLAS = False
        else:
            controller = ThreadpoolController()
            _BLAS = controller if controller.select(user_api="blas").lib_controllers else False
    if _BLAS is False:
        return contextlib.nullcontext()
    return _BLAS.limit(limits=1, user_api="blas")


_BLAS: Any = None  # the threadpoolctl controller, False without one, None before the first product


def apply_envelope(block: np.ndarray, begin: int, length: int, attack_n: int, release_n: int) -> None:
    """Multiply samples ``begin …`` of a note of ``length`` by its envelope, in place.

    Gain at sample ``k``: ``min(1, k / attack_n, (length - 1 - k) / release_n)``: from exactly 0 at the
    first sample up, and down to exactly 0 at the last.
    """
    end = begin + block.shape[1]
    if attack_n + release_n > length:  # a note too short for both ramps: the lower of the two
        k = np.arange(begin, end, dtype=np.float64)
        gain = np.ones(k.shape[0])
        if attack_n:
            np.minimum(gain, k / attack_n, out=gain)
        if release_n:
            np.minimum(gain, (length - 1 - k) / release_n, out=gain)
        block *= np.maximum(gain, 0.0).astype(np.float32)
        return
    if attack_n and begin < attack_n:
        stop = min(end, attack_n)
        block[:, :stop - begin] *= np.arange(begin, stop, dtype=np.float32) / np.float32(attack_n)
    if release_n and end > length - release_n:
        low = max(begin, length - release_n)
        block[:, low - begin:] *= (np.float32(length - 1) - np.arange(low, end, dtype=np.float32)) / \
            np.float32(release_n)


class Workspace:
    """Scratch arrays reused from step to step: fresh large arrays cost more than the arithmetic on them."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of ``shape`` (contents undefined), backed by the named scratch array."""
        size = math.prod(shape)
        array = self._arrays.get(name)
        if array is None or array.shape[0] < size:
            array = self._arrays[name] = np.empty(max(size, 2 * (0 if array is None else array.shape[0])),
                                                  dtype=np.float32)
        return array[:size].reshape(shape)


def pan_gains(pan: float, audio_channels: int) -> np.ndarray:
    """Per-channel gains, float64 ``(audio_channels,)``: mono 1; stereo constant power, pan -1 (left) … 1 (right)."""
    if audio_channels == 1:
        return np.ones(1)
    return np.array([math.sin((1.0 - pan) * math.pi / 4.0), math.sin((1.0 + pan) * math.pi / 4.0)])
