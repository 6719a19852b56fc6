"""Adding notes into an accumulation buffer, in the order one step at a time would add them.

``add_notes`` takes a ``NoteBatch`` (notes of one or many steps) and a float32 ``(channels, samples)``
buffer with room for them. A step's notes are taken by length, then waveform, then time. Notes of one
step and one length that start together (a chord) are summed by matrix products, many chords per call
(``bridge.sinks.voices.chord_sums``); all other notes of one length, whatever their step, are computed
as rows of one array and added where they belong, a run of notes back to back as one slice. Every
note's samples depend only on the note, never on which notes are computed with it, so a chunk of steps
sounds bit for bit as its steps one at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bridge.sinks.playable import NoteBatch
from bridge.sinks.voices import BLOCK, Workspace, apply_envelope, chord_sums, oscillator_rows

__all__ = ["add_notes"]

_TILE_ELEMENTS = 1 << 19  # notes × samples computed at once (keeps scratch arrays in cache, memory bounded)
_CHORD_ELEMENTS = 1 << 19  # chords × notes × samples summed in one call (small chords share its fixed cost)
_ROW_TILE = 1 << 14  # samples of a note computed at once when notes follow one another (a multiple of BLOCK)


def add_notes(buf: np.ndarray, batch: NoteBatch, rel: np.ndarray, attack_n: int, release_n: int, work: Workspace,
              hold_blas: Callable[[], None]) -> None:
    """Add ``batch``'s notes into ``buf`` at offsets ``rel`` (samples from ``buf[:, 0]``); samples before
    the buffer are left out. ``attack_n``, ``release_n``: the envelope's ramps in samples. ``hold_blas``
    is called before the first matrix product."""
    codes, lengths, inc, phase0, gains, step = (batch.codes, batch.lengths, batch.inc, batch.phase0, batch.gains,
                                                batch.step)
    if step[0] == step[-1] and lengths.min() == lengths.max():  # one step, one length: the live case
        length = int(lengths[0])
        if codes.shape[0] == 1 or codes[0] == codes[-1] and bool((rel[1:] > rel[:-1]).all()):
            # one note, or notes of one waveform one after another: rows, already in order
            _add_rows_of_length(buf, codes, rel, inc, phase0, gains, length, attack_n, release_n, work)
            return
        if rel.min() == rel.max():  # a chord: straight to the products, waveforms in order
            if (codes[1:] < codes[:-1]).any():
                order = np.argsort(codes, kind="stable")
                codes, inc, phase0, gains = codes[order], inc[order], phase0[order], gains[:, order]
            hold_blas()
            _add_alike_chords(buf, codes, inc[None], phase0[None], gains[None], [int(rel[0])], length, attack_n,
                              release_n, work)
            return
    one_length = codes.shape[0] == 1 or lengths.min() == lengths.max()
    if codes.shape[0] > 1 and not _in_order(step, None if one_length else lengths, codes, rel):
        order = np.lexsort((rel, codes, lengths, step))
        codes, rel, lengths, inc, phase0, step = (a[order] for a in (codes, rel, lengths, inc, phase0, step))
        gains = gains[:, order]
    chords, rows = _chords(step, lengths, rel)
    if chords:
        _add_chords(buf, chords, codes, rel, lengths, inc, phase0, gains, attack_n, release_n, work, hold_blas)
    if rows is not None:
        if rows.shape[0] != codes.shape[0]:
            codes, rel, lengths, inc, phase0 = (a[rows] for a in (codes, rel, lengths, inc, phase0))
            gains = gains[:, rows]
        for length in [int(lengths[0])] if one_length else np.unique(lengths).tolist():
            pick = slice(None) if one_length else np.flatnonzero(lengths == length)
            _add_rows_of_length(buf, codes[pick], rel[pick], inc[pick], phase0[pick], gains[:, pick], length,
                                attack_n, release_n, work)


def _add_chords(buf: np.ndarray, chords: list[tuple[int, int]], codes: np.ndarray, rel: np.ndarray,
                lengths: np.ndarray, inc: np.ndarray, phase0: np.ndarray, gains: np.ndarray, attack_n: int,
                release_n: int, work: Workspace, hold_blas: Callable[[], None]) -> None:
    """Add chords (index ranges of notes starting together, ``codes`` sorted in each), each summed.

    Chords of one length and the same waveforms are computed together, in tiles of samples that
    depend only on the chord's size, so a chord sounds the same whichever chords come with it.
    """
    hold_blas()
    alike: dict[tuple[int, int, bytes], list[int]] = {}
    for low, high in chords:
        alike.setdefault((int(lengths[low]), high - low, codes[low:high].tobytes()), []).append(low)
    for (length, notes, _), lows in alike.items():
        pick = np.array(lows)[:, None] + np.arange(notes)
        _add_alike_chords(buf, codes[lows[0]:lows[0] + notes], inc[pick], phase0[pick],
                          gains[:, pick].transpose(1, 0, 2), rel[lows].tolist(), length, attack_n, release_n, work)


def _add_alike_chords(buf: np.ndarray, codes: np.ndarray, inc: np.ndarray, phase0: np.ndarray, gains: np.ndarray,
                      at: list[int], length: int, attack_n: int, release_n: int, work: Workspace) -> None:
    """Add chords of one length and the same waveforms ``codes`` (sorted), stacked: ``inc``, ``phase0``
    ``(chords, notes)``, ``gains`` ``(chords, channels, notes)``, each chord at its buffer offset ``at``."""
    notes = codes.shape[0]
    tile = max(BLOCK, _TILE_ELEMENTS // notes)
    per_call = max(1, _CHORD_ELEMENTS // (notes * min(tile, length)))
    for begin in range(0, length, tile):
        count = min(tile, length - begin)
        if begin + count + max(at) <= 0:  # every chord's tile was popped already
            continue
        phase = phase0 if begin == 0 else (phase0 + inc * begin) % 1.0
        for first in range(0, len(at), per_call):
            part = slice(first, first + per_call)
            block = chord_sums(codes, inc[part], phase[part], gains[part], count, work)
            apply_envelope(block, begin, length, attack_n, release_n)
            for sums, offset in zip(block, at[part]):
                skip = max(0, -(offset + begin))
                if skip < count:
                    buf[:, offset + begin + skip:offset + begin + count] += sums[:, skip:]


def _add_rows_of_length(buf: np.ndarray, codes: np.ndarray, rel: np.ndarray, inc: np.ndarray,
                        phase0: np.ndarray, gains: np.ndarray, length: int, attack_n: int, release_n: int,
                        work: Workspace) -> None:
    """Add notes of one ``length`` at buffer offsets ``rel``, each on its own, in the order given.

    A note's samples are computed in tiles of ``_ROW_TILE`` from its start, so they do not depend on
    which other notes are computed with it.
    """
    per_call = max(1, _TILE_ELEMENTS // min(length, _ROW_TILE))
    for low in range(0, codes.shape[0], per_call):
        part = slice(low, low + per_call)
        c, r, i, p, g = codes[part], rel[part], inc[part], phase0[part], gains[:, part]
        by_wave = back = None
        if c.shape[0] > 1 and (c[1:] < c[:-1]).any():  # the oscillators want one run per waveform
            by_wave = np.argsort(c, kind="stable")
            back = np.empty_like(by_wave)
            back[by_wave] = np.arange(by_wave.shape[0])
            c, i, p = c[by_wave], i[by_wave], p[by_wave]
        for begin in range(max(0, -int(r.max())) // _ROW_TILE * _ROW_TILE, length, _ROW_TILE):
            count = min(_ROW_TILE, length - begin)
            phase = p if begin == 0 else (p + i * begin) % 1.0
            rows = oscillator_rows(c, i, phase, count, work)
            apply_envelope(rows, begin, length, attack_n, release_n)
            _add_rows(buf, rows if back is None else rows[back], g, r + begin)

def _add_rows(buf: np.ndarray, rows: np.ndarray, gains: np.ndarray, offsets: np.ndarray) -> None:
    """Add each row (notes, count), times its gains (channels, notes), into the buffer at its offset.

    Rows go in the order given; a run of notes one after another with no gap is one slice, and runs
    alike at even spacing (the sequential layout, step after step) are one strided view. Samples
    before the buffer (already popped) are left out.
    """
    notes, count = rows.shape
    channels = gains.shape[0]
    product = (gains[:, :, None] * rows).reshape(channels, notes * count)
    at = offsets.tolist()
    if min(at) >= 0:
        if at[-1] - at[0] == (notes - 1) * count and at == list(range(at[0], at[-1] + 1, count)):
            buf[:, at[0]:at[0] + notes * count] += product  # back to back: one slice
            return
        breaks = (np.flatnonzero(np.diff(offsets) != count) + 1).tolist()
        runs, per_run = len(breaks) + 1, notes // (len(breaks) + 1)
        if runs > 2 and breaks == list(range(per_run, notes, per_run)):
            spacing = at[per_run] - at[0]
            if spacing >= per_run * count and at[-per_run] - at[0] == (runs - 1) * spacing and \
                    bool((np.diff(offsets[::per_run]) == spacing).all()):
                window = buf[:, at[0]:at[0] + (runs - 1) * spacing + per_run * count]
                view = np.lib.stride_tricks.as_strided(
                    window, shape=(channels, runs, per_run * count),
                    strides=(window.strides[0], spacing * window.strides[1], window.strides[1]))
                view += product.reshape(channels, runs, per_run * count)
                return
        for low, high in zip([0] + breaks, breaks + [notes]):
            buf[:, at[low]:at[low] + (high - low) * count] += product[:, low * count:high * count]
        return
    for row, offset in enumerate(at):
        skip = max(0, -offset)
        if skip < count:
            buf[:, offset + skip:offset + count] += product[:, row * count + skip:(row + 1) * count]


def _in_order(step: np.ndarray, lengths: np.ndarray | None, codes: np.ndarray, rel: np.ndarray) -> bool:
    """Whether the notes already come by step, then length (None: all of one length), then waveform,
    then time."""
    d_code = codes[1:] - codes[:-1]
    backwards = (d_code < 0) | (d_code == 0) & (rel[1:] < rel[:-1])
    if lengths is not None:
        d_length = lengths[1:] - lengths[:-1]
        backwards = (d_length < 0) | (d_length == 0) & backwards
    if step[0] != step[-1]:
        backwards &= step[1:] == step[:-1]
    return not bool(backwards.any())


def _chords(step: np.ndarray, lengths: np.ndarray, rel: np.ndarray) -> tuple[list[tuple[int, int]],
                                                                             np.ndarray | None]:
    """Split notes sorted by step and length into chords and the rest.

    Returns the (low, high) index ranges of the chords (two or more notes of one step and one length,
    all at one start), and the indices of the other notes (None when there are none).
    """
    notes = step.shape[0]
    if notes == 1:
        return [], np.zeros(1, dtype=np.int64)
    new_group = np.empty(notes, dtype=bool)
    new_group[0] = True
    np.not_equal(step[1:], step[:-1], out=new_group[1:])
    new_group[1:] |= lengths[1:] != lengths[:-1]
    apart = ~new_group[1:] & (rel[1:] != rel[:-1])
    if not new_group[1:].any():  # one group: a chord, or no chord at all
        return ([(0, notes)], None) if not apart.any() else ([], np.arange(notes))
    group = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    size = np.diff(np.append(starts, notes))
    chord = size >= 2
    chord[group[1:][apart]] = False
    if not chord.any():
        return [], np.arange(notes)
    ranges = [(low, low + n) for low, n in zip(starts[chord].tolist(), size[chord].tolist())]
    rest = np.flatnonzero(~chord[group])
    return ranges, (rest if rest.shape[0] else None)
