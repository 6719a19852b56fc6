// Decoding what the server sends (bridge/serve/protocol.py, docs/serve.md). Little-endian throughout.
'use strict';
window.gradbridge = window.gradbridge || {};

(function (GB) {
  const FRAMES = 1, SOUND = 2, SOUND_PAST = 3;
  const RECORD_FIXED = 40, FRAMES_HEAD = 4, SOUND_HEAD = 48, NOTE = 28, ALARM = 16, MIDI = 12;

  // Each run log record of a FRAMES message: calls visit(step, captureS, loss, lr, view, normsOffset).
  function eachRecord(buffer, layers, visit) {
    const view = new DataView(buffer);
    const size = RECORD_FIXED + 4 * layers;
    for (let at = FRAMES_HEAD; at + size <= buffer.byteLength; at += size) {
      if (view.getUint8(at) !== 0x8e || view.getUint8(at + 3) !== 0x46) continue;  // the mark, kind "F"
      visit(Number(view.getBigInt64(at + 4, true)), view.getFloat64(at + 12, true), view.getFloat64(at + 20, true),
            view.getFloat64(at + 28, true), view, at + 36);
    }
  }

  // A SOUND or SOUND_PAST message as {past, step, captureS, sentS, durationS, index, notes, alarms, midi}.
  function decodeSound(buffer) {
    const v = new DataView(buffer);
    const kind = v.getUint8(0);
    const counts = [v.getUint32(4, true), v.getUint32(8, true), v.getUint32(12, true)];
    const out = {past: kind === SOUND_PAST, step: Number(v.getBigInt64(16, true)), captureS: v.getFloat64(24, true),
                 sentS: v.getFloat64(32, true), durationS: v.getFloat32(40, true), index: v.getUint32(44, true),
                 notes: [], alarms: [], midi: []};
    let at = SOUND_HEAD;
    for (let i = 0; i < counts[0]; i++, at += NOTE) {
      out.notes.push({layer: v.getUint32(at, true), offsetS: v.getFloat32(at + 4, true),
                      durationS: v.getFloat32(at + 8, true), frequency: v.getFloat32(at + 12, true),
                      amplitude: v.getFloat32(at + 16, true), value: v.getFloat32(at + 20, true),
                      midiNote: v.getUint8(at + 24), velocity: v.getUint8(at + 25)});
    }
    for (let i = 0; i < counts[1]; i++, at += ALARM) {
      out.alarms.push({layer: v.getUint32(at, true), offsetS: v.getFloat32(at + 4, true),
                       durationS: v.getFloat32(at + 8, true), kind: v.getUint8(at + 12),
                       midiNote: v.getUint8(at + 13), velocity: v.getUint8(at + 14)});
    }
    for (let i = 0; i < counts[2]; i++, at += MIDI) {
      const status = v.getUint8(at + 9);
      const bytes = (status & 0xf0) === 0xc0 || (status & 0xf0) === 0xd0
        ? [status, v.getUint8(at + 10)] : [status, v.getUint8(at + 10), v.getUint8(at + 11)];
      out.midi.push({offsetS: v.getFloat32(at, true), note: v.getUint32(at + 4, true), order: v.getUint8(at + 8), bytes});
    }
    return out;
  }

  GB.protocol = {FRAMES, SOUND, SOUND_PAST, eachRecord, decodeSound};
})(window.gradbridge);
