"""The voices: oscillators, envelopes and pan, pure NumPy; ``bridge.sinks.synth`` places them in time.

Waveforms (``bridge.events.WAVEFORMS``) all start at 0 and rise (the square at +1), amplitude 1, phase in
cycles: sine ``sin 2πx``, triangle, square and saw. Phases are 32-bit fixed point (``2^-32`` cycle), so
wrapping to one cycle is the integers' own overflow. Sample ``k = q·BLOCK + r`` of a note has phase
``coarse[q] + fine[r]``, so many notes of one length are computed at once by one broadcast addition,
with no per-sample Python: as a (notes, samples) array (``oscillator_rows``), or summed straight into
(channels, samples) when they start together (``chord_sums``, for many chords at once); a chord of sines
never even makes the per-note array (``Σ g·sin(a + b) = Σ g·sin a·cos b + g·cos a·sin b``). Arrays are
float32 unless stated.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np

from bridge.events import WAVEFORMS

__all__ = ["BLOCK", "WAVE_CODES", "Workspace", "apply_envelope", "chord_sums", "one_blas_thread", "oscillator_rows",
           "pan_gains"]

#: Samples per coarse phase step; notes are computed in whole blocks of this many samples.
BLOCK = 128
#: Waveform name -> the code ``oscillator_rows`` and ``chord_sums`` take: its index in ``WAVEFORMS``.
WAVE_CODES = {name: code for code, name in enumerate(WAVEFORMS)}
_SINE, _TRIANGLE, _SQUARE, _SAW = (WAVE_CODES[name] for name in ("sine", "triangle", "square", "saw"))
# Per waveform code: phase offset in cycles, so that every waveform starts at 0 and rises (the triangle's
# row is computed a quarter cycle early).
_OFFSETS = np.array([{"triangle": -0.25}.get(name, 0.0) for name in WAVEFORMS])
_FIXED = 2.0 ** 32  # one cycle in 32-bit fixed point
_FIXED64 = 2.0 ** 64  # one cycle in 64-bit fixed point


def _fixed_phases(inc: np.ndarray, phase0: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Phase of sample ``k = q·BLOCK + r`` as ``coarse[..., q] + fine[..., r]`` (uint32, wrapping at one cycle).

    ``inc`` (cycles per sample) and ``phase0`` (cycles) have shape ``(..., notes)``; returns ``coarse``
    ``(..., notes, blocks)`` and ``fine`` ``(..., notes, BLOCK)``. Worked out in 64-bit fixed point (the
    increment exact to ``2^-65`` cycle), then cut to the top 32 bits.
    """
    step = (inc * _FIXED64).astype(np.uint64)
    start = ((phase0 % 1.0) * _FIXED64).astype(np.uint64)
    coarse = np.multiply.outer(step, np.arange(0, count, BLOCK, dtype=np.uint64))  # wraps: modulo one cycle
    coarse += start[..., None]
    fine = np.multiply.outer(step, np.arange(BLOCK, dtype=np.uint64))
    return (coarse >> np.uint64(32)).astype(np.uint32), (fine >> np.uint64(32)).astype(np.uint32)


def _waves(codes: np.ndarray, inc: np.ndarray, phase0: np.ndarray, count: int, work: Workspace,
           final: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each note's oscillator up to an affine map: float32 rows ``(..., notes, blocks·BLOCK)`` (use the
    first ``count`` samples) and per-note ``scale``, ``bias`` with ``wave = scale·row + bias``.

    ``codes`` ``(notes,)`` must come sorted (one run per waveform); ``inc`` and ``phase0`` have shape
    ``(..., notes)``. With ``final`` the rows are the waves themselves (scale 1, bias 0). With the phase
    ``v`` as a signed 32-bit integer (``v·2^-32`` in [-1/2, 1/2)): saw ``v·2^-31``, square the sign of
    ``v``, triangle ``1 - |v|·2^-30`` (a quarter cycle early), sine ``sin(2π·v·2^-32)``.
    """
    coarse, fine = _fixed_phases(inc, phase0 + _OFFSETS[codes], count)
    shape = (*coarse.shape, BLOCK)
    phases = work.get("phases", shape, np.uint32)
    np.add(coarse[..., None], fine[..., None, :], out=phases)
    phases = phases.reshape(*shape[:-3], shape[-3], -1)
    rows = work.get("rows", phases.shape, np.float32)
    signed = phases.view(np.int32)
    scale = bias = None
    if not final:
        scale, bias = np.ones(codes.shape[0]), np.zeros(codes.shape[0])
    edges = [] if codes[0] == codes[-1] else (np.flatnonzero(codes[1:] != codes[:-1]) + 1).tolist()
    for low, high in zip([0] + edges, edges + [codes.shape[0]]):  # one run of rows per waveform
        code, run, v, out = int(codes[low]), slice(low, high), signed[..., low:high, :], rows[..., low:high, :]
        if code == _SINE:
            np.multiply(v, np.float32(2.0 * math.pi / _FIXED), out=out, dtype=np.float32, casting="unsafe")
            np.sin(out, out=out)
        elif code == _SAW:
            if final:
                np.multiply(v, np.float32(2.0 / _FIXED), out=out, dtype=np.float32, casting="unsafe")
            else:
                np.copyto(out, v, casting="unsafe")
                scale[run] = 2.0 / _FIXED
        elif code == _SQUARE:
            if final:  # the sign of v, v = 0 (phase 0) counting as +1
                np.copyto(out, v, casting="unsafe")
                np.copysign(np.float32(1.0), out, out=out)
            else:  # v >> 31 is 0 or -1: the square is 1 + 2·that
                np.right_shift(v, 31, out=v)
                np.copyto(out, v, casting="unsafe")
                scale[run], bias[run] = 2.0, 1.0
        else:  # triangle: |v| read unsigned, as |-2^31| wraps to 2^31
            np.abs(v, out=v)
            magnitude = phases[..., low:high, :]
            if final:
                np.multiply(magnitude, np.float32(-4.0 / _FIXED), out=out, dtype=np.float32, casting="unsafe")
                out += np.float32(1.0)
            else:
                np.copyto(out, magnitude, casting="unsafe")
                scale[run], bias[run] = -4.0 / _FIXED, 1.0
    return rows, scale, bias  # type: ignore[return-value]


def oscillator_rows(codes: np.ndarray, inc: np.ndarray, phase0: np.ndarray, count: int,
                    work: Workspace) -> np.ndarray:
    """Each note's oscillator, float32 ``(notes, count)``, amplitude 1, from phase ``phase0`` (cycles).

    ``codes`` (``WAVE_CODES`` values, sorted: one run per waveform), ``inc`` (frequency in cycles per
    sample) and ``phase0`` have one entry per note. The rows are a view into ``work``'s scratch memory:
    use them before the next call with the same ``work``.
    """
    return _waves(codes, inc, phase0, count, work, final=True)[0][:, :count]


def chord_sums(codes: np.ndarray, inc: np.ndarray, phase0: np.ndarray, gains: np.ndarray, count: int,
               work: Workspace) -> np.ndarray:
    """Chords of notes starting together, each summed: float32 ``(chords, channels, count)`` with
    ``out[c] = Σ_i gains[c, :, i]·wave_ci``.

    ``codes`` ``(notes,)``, the same for every chord, must come sorted, sines first; ``inc`` and
    ``phase0`` are ``(chords, notes)`` as for ``oscillator_rows``, ``gains`` float32 ``(chords, channels,
    notes)``. Sines need no per-note array: ``Σ g·sin 2π(a + b) = Σ (g·sin 2πa)·cos 2πb + (g·cos 2πa)·sin
    2πb`` is one matrix product per chord over (block, note) × (note, offset in block). The other waveforms
    are made as rows (see ``_waves``) and summed by a matrix product with the gains, scale and bias folded
    in. Each chord's sum is the same whichever chords come with it. Call it inside ``one_blas_thread()``.
    """
    sines = int(np.searchsorted(codes, _SINE, side="right"))
    chords, channels = gains.shape[0], gains.shape[1]
    total = None
    if sines < codes.shape[0]:
        rows, scale, bias = _waves(codes[sines:], inc[:, sines:], phase0[:, sines:], count, work, final=False)
        others = gains[:, :, sines:]
        full = np.matmul((others * scale).astype(np.float32), rows)  # whole rows: a strided stack skips BLAS
        full += (others @ bias).astype(np.float32)[..., None]
        total = np.ascontiguousarray(full[..., :count])
    if sines:
        coarse = np.multiply.outer(inc[:, :sines], np.arange(-(-count // BLOCK), dtype=np.float64) * BLOCK)
        coarse += phase0[:, :sines, None]
        fine = np.multiply.outer(inc[:, :sines], np.arange(BLOCK, dtype=np.float64))
        a = ((coarse - np.floor(coarse)) * (2.0 * np.pi)).astype(np.float32).transpose(0, 2, 1)  # (c, blocks, n)
        b = ((fine - np.floor(fine)) * (2.0 * np.pi)).astype(np.float32)  # (c, n, BLOCK)
        blocks = a.shape[1]
        left = np.empty((chords, channels, blocks, 2, sines), dtype=np.float32)
        g = gains[:, :, None, :sines]
        np.multiply(np.sin(a)[:, None], g, out=left[:, :, :, 0, :])
        np.multiply(np.cos(a)[:, None], g, out=left[:, :, :, 1, :])
        right = np.empty((chords, 2, sines, BLOCK), dtype=np.float32)
        np.cos(b, out=right[:, 0])
        np.sin(b, out=right[:, 1])
        product = np.matmul(left.reshape(chords, channels * blocks, 2 * sines), right.reshape(chords, 2 * sines, BLOCK))
        sums = product.reshape(chords, channels, blocks * BLOCK)[..., :count]
        total = np.ascontiguousarray(sums) if total is None else np.add(total, sums, out=total)
    return total


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
    """Multiply samples ``begin …`` (the last axis of ``block``) of a note of ``length`` by its envelope,
    in place.

    Gain at sample ``k``: ``min(1, k / attack_n, (length - 1 - k) / release_n)``: from exactly 0 at the
    first sample up, and down to exactly 0 at the last.
    """
    end = begin + block.shape[-1]
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
        block[..., :stop - begin] *= np.arange(begin, stop, dtype=np.float32) / np.float32(attack_n)
    if release_n and end > length - release_n:
        low = max(begin, length - release_n)
        block[..., low - begin:] *= (np.float32(length - 1) - np.arange(low, end, dtype=np.float32)) / \
            np.float32(release_n)


class Workspace:
    """Scratch arrays reused from step to step: fresh large arrays cost more than the arithmetic on them."""

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type = np.float32) -> np.ndarray:
        """An array of ``shape`` and ``dtype`` (contents undefined), backed by the named scratch memory."""
        size = math.prod(shape) * np.dtype(dtype).itemsize
        array = self._arrays.get(name)
        if array is None or array.shape[0] < size:
            array = self._arrays[name] = np.empty(max(size, 2 * (0 if array is None else array.shape[0])),
                                                  dtype=np.uint8)
        return array[:size].view(dtype).reshape(shape)


def pan_gains(pan: float, audio_channels: int) -> np.ndarray:
    """Per-channel gains, float64 ``(audio_channels,)``: mono 1; stereo constant power, pan -1 (left) … 1 (right)."""
    if audio_channels == 1:
        return np.ones(1)
    return np.array([math.sin((1.0 - pan) * math.pi / 4.0), math.sin((1.0 + pan) * math.pi / 4.0)])
