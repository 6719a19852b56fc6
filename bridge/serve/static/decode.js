// Decoding what the server sends (bridge/serve/protocol.py, docs/serve.md). Little-endian throughout.
'use strict';
window.gradbridge = window.gradbridge || {};

(function (GB) {
  const FRAMES = 1, SOUND = 2, SOUND_PAST = 3, SPIKES = 4;
  const RECORD_FIXED = 40, FRAMES_HEAD = 4, SOUND_HEAD = 56, NOTE = 32, ALARM = 16, SPIKE = 20, MIDI = 12;
  const SPIKES_HEAD = 8, SPIKE_MARK = 16;

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

  // A SOUND or SOUND_PAST message as {past, step, captureS, sentS, durationS, index, notes, alarms, spikes, midi}.
  function decodeSound(buffer) {
    const v = new DataView(buffer);
    const kind = v.getUint8(0);
    const counts = {notes: v.getUint32(4, true), alarms: v.getUint32(8, true), midi: v.getUint32(12, true),
                    spikes: v.getUint32(48, true)};
    const out = {past: kind === SOUND_PAST, step: Number(v.getBigInt64(16, true)), captureS: v.getFloat64(24, true),
                 sentS: v.getFloat64(32, true), durationS: v.getFloat32(40, true), index: v.getUint32(44, true),
                 notes: [], alarms: [], spikes: [], midi: []};
    let at = SOUND_HEAD;
    for (let i = 0; i < counts.notes; i++, at += NOTE) {
      out.notes.push({layer: v.getUint32(at, true), offsetS: v.getFloat32(at + 4, true),
                      durationS: v.getFloat32(at + 8, true), amplitude: v.getFloat32(at + 12, true),
                      value: v.getFloat32(at + 16, true), midiNote: v.getUint8(at + 20), velocity: v.getUint8(at + 21),
                      frequency: v.getFloat64(at + 24, true)});
    }
    for (let i = 0; i < counts.alarms; i++, at += ALARM) {
      out.alarms.push({layer: v.getUint32(at, true), offsetS: v.getFloat32(at + 4, true),
                       durationS: v.getFloat32(at + 8, true), kind: v.getUint8(at + 12),
                       midiNote: v.getUint8(at + 13), velocity: v.getUint8(at + 14)});
    }
    for (let i = 0; i < counts.spikes; i++, at += SPIKE) {
      out.spikes.push({layer: v.getUint32(at, true), offsetS: v.getFloat32(at + 4, true),
                       durationS: v.getFloat32(at + 8, true), ratio: v.getFloat32(at + 12, true),
                       midiNote: v.getUint8(at + 16), velocity: v.getUint8(at + 17)});
    }
    for (let i = 0; i < counts.midi; i++, at += MIDI) {
      const status = v.getUint8(at + 9);
      const bytes = (status & 0xf0) === 0xc0 || (status & 0xf0) === 0xd0
        ? [status, v.getUint8(at + 10)] : [status, v.getUint8(at + 10), v.getUint8(at + 11)];
      out.midi.push({offsetS: v.getFloat32(at, true), note: v.getUint32(at + 4, true), order: v.getUint8(at + 8), bytes});
    }
    return out;
  }

  // A SPIKES message (the spike alarms sounded before the page connected) as [{step, layer, ratio}].
  function decodeSpikes(buffer) {
    const v = new DataView(buffer), out = [];
    const count = v.getUint32(4, true);
    for (let i = 0, at = SPIKES_HEAD; i < count; i++, at += SPIKE_MARK) {
      out.push({step: Number(v.getBigInt64(at, true)), layer: v.getUint32(at + 8, true),
                ratio: v.getFloat32(at + 12, true)});
    }
    return out;
  }

  GB.protocol = {FRAMES, SOUND, SOUND_PAST, SPIKES, eachRecord, decodeSound, decodeSpikes};
})(window.gradbridge);
