// Playing the sound steps the server sends: the synth (synth-worklet.js) on the audio clock, and Web MIDI.
//
// Scheduling. A step arriving while playing starts LATENCY_S after now on the audio clock, or where the step
// before it ends when that is later (steps queue back to back at their musical length); a queue longer than
// MAX_BACKLOG_S starts again from now. Its notes go to the worklet at once, with their start frame. MIDI
// messages wait in one queue, sorted by time; every 25 ms those due within HORIZON_S (less than LATENCY_S,
// so no later step can come before them) are handed to the MIDI output with their timestamp, in order,
// doing what the MIDI port output does at each: a note struck again while it sounds is ended first, a note
// off that a newer note of its pitch made stale is left out. Stopping, and the end of the run, end every
// sounding note and send All Notes Off (controller 123) on every channel used, as the MIDI port output does
// when it closes.
'use strict';
window.gradbridge = window.gradbridge || {};

(function (GB) {
  const LATENCY_S = 0.15, MAX_BACKLOG_S = 1.0, HORIZON_S = 0.1, MIDI_TICK_MS = 25, ALL_NOTES_OFF = 123;

  // x rounded to the nearest integer, halves to the even one, as the built-in synth rounds times to samples
  // (NumPy's rint, Python's round); Math.round takes halves up.
  function roundHalfEven(x) {
    const r = Math.round(x);
    return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  function workletUrl() {
    return 'static/synth-worklet.js?token=' + encodeURIComponent(GB.token || '');
  }

  function synthOptions(hello, steps) {
    const a = hello.arrangement, s = hello.synth;
    return {numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [a.audio_channels], processorOptions: {
      channels: a.audio_channels, voices: a.voices, phase: a.phase, attack_s: a.attack_s, release_s: a.release_s,
      max_frequency_hz: a.max_frequency_hz, min_frequency_hz: s.min_frequency_hz,
      alarm_frequencies_hz: s.alarm_frequencies_hz, alarm_amplitude: s.alarm_amplitude,
      spike_frequencies_hz: s.spike_frequencies_hz, spike_amplitude: s.spike_amplitude,
      alarm_edge_s: s.alarm_edge_s, limit_knee: s.limit_knee, peak: s.peak, steps}};
  }

  // One step for the worklet, starting at audio frame `frame`: times in frames, lengths cut at the built-in synth's
  // longest note.
  function workletStep(step, frame, sampleRate, maxNoteS) {
    const at = (x) => frame + roundHalfEven(x.offsetS * sampleRate);
    const length = (x) => roundHalfEven(Math.min(x.durationS, maxNoteS) * sampleRate);
    return {
      notes: step.notes.map((n) => ({layer: n.layer, frame: at(n), length: length(n), frequency: n.frequency,
                                     amplitude: n.amplitude})),
      alarms: step.alarms.map((a) => ({frame: at(a), length: length(a)})),
      spikes: step.spikes.map((a) => ({frame: at(a), length: length(a)})),
    };
  }

  class Player {
    constructor() {
      this.hello = null;
      this.ctx = null;
      this.node = null;
      this.playing = false;
      this.queueEnd = 0;
      this.played = 0;
      this.midiOut = null;
      this.midiQueue = [];  // {at (audio s), order, seq, bytes, note}
      this.seq = 0;
      this.noteBase = 0;
      this.sounding = new Map();  // channel << 8 | pitch -> note id
      this.used = new Set();
      this.ending = false;
      this.sent = 0;  // MIDI messages handed to the output
      setInterval(() => this.flushMidi(false), MIDI_TICK_MS);
    }

    setHello(hello) {
      const before = this.hello;
      const same = before && JSON.stringify(before.arrangement) === JSON.stringify(hello.arrangement);
      this.hello = hello;
      this.ending = false;
      if (before && !same && this.playing) this.stop();  // another run on this address: start again
      if (this.midiOut && !same) this.setMidiOutput(this.midiOut);  // its program changes
    }

    get available() { return typeof AudioWorkletNode !== 'undefined' && window.isSecureContext; }

    async play() {
      if (!this.hello) throw new Error('not connected yet');
      if (!this.available) throw new Error('sound needs a secure context: open the page at http://127.0.0.1 (an SSH tunnel) or localhost');
      const a = this.hello.arrangement;
      this.ctx = new AudioContext({sampleRate: a.sample_rate, latencyHint: 'interactive'});
      await this.ctx.audioWorklet.addModule(workletUrl());
      this.node = new AudioWorkletNode(this.ctx, 'gradbridge-synth', synthOptions(this.hello, []));
      this.node.connect(this.ctx.destination);
      await this.ctx.resume();
      this.queueEnd = 0;
      this.playing = true;
    }

    stop() {
      this.playing = false;
      if (this.node) { this.node.port.postMessage({stop: true}); this.node.disconnect(); }
      if (this.ctx) this.ctx.close();
      this.ctx = this.node = null;
      this.midiQueue = [];
      this.silenceMidi();
    }

    // A live sound step: schedule its notes on the audio clock and its MIDI messages.
    schedule(step) {
      if (!this.playing || !this.ctx) return false;
      const now = this.ctx.currentTime, sr = this.ctx.sampleRate;
      let start = Math.max(now + LATENCY_S, this.queueEnd);
      if (start - now > LATENCY_S + MAX_BACKLOG_S) start = now + LATENCY_S;
      this.queueEnd = start + step.durationS;
      this.node.port.postMessage(workletStep(step, Math.round(start * sr), sr, this.hello.synth.max_note_s));
      if (this.midiOut) {
        for (const m of step.midi) {
          this.midiQueue.push({at: start + m.offsetS, order: m.order, seq: this.seq++, bytes: m.bytes,
                               note: m.note ? this.noteBase + m.note : 0});
        }
        this.noteBase += step.midi.length + 1;
        this.midiQueue.sort((x, y) => x.at - y.at || x.order - y.order || x.seq - y.seq);
      }
      this.played++;
      return true;
    }

    // Web MIDI: the output chosen (null: none). The program changes go at once, as a MIDI port sends at open.
    setMidiOutput(output) {
      if (this.midiOut) this.silenceMidi();
      this.midiOut = output;
      this.sounding.clear();
      this.used = new Set(this.hello ? this.hello.midi.channels : []);
      if (output && this.hello) for (const message of this.hello.midi.programs) this.send(message, undefined);
    }

    send(bytes, timestamp) {
      this.midiOut.send(bytes, timestamp);
      this.sent++;
    }

    toPerformanceTime(audioS) {
      const stamp = this.ctx && this.ctx.getOutputTimestamp ? this.ctx.getOutputTimestamp() : null;
      if (stamp && stamp.performanceTime > 0) return stamp.performanceTime + (audioS - stamp.contextTime) * 1000;
      return performance.now() + (audioS - (this.ctx ? this.ctx.currentTime : 0)) * 1000;
    }

    flushMidi(all) {
      if (!this.midiOut || !this.ctx) return;
      const until = all ? Infinity : this.ctx.currentTime + HORIZON_S;
      let taken = 0;
      for (const m of this.midiQueue) {
        if (m.at > until) break;
        taken++;
        const when = this.toPerformanceTime(m.at), kind = m.bytes[0] & 0xf0, channel = m.bytes[0] & 0x0f;
        const key = channel << 8 | m.bytes[1];
        if (kind === 0x90) {
          if (this.sounding.has(key)) this.send([0x80 | channel, m.bytes[1], 0], when);  // struck again
          this.send(m.bytes, when);
          this.sounding.set(key, m.note);
          this.used.add(channel);
        } else if (kind === 0x80) {
          if (this.sounding.get(key) === m.note) { this.send(m.bytes, when); this.sounding.delete(key); }
        } else {
          this.send(m.bytes, when);
        }
      }
      if (taken) this.midiQueue.splice(0, taken);
      if (this.ending && this.midiQueue.length === 0) { this.ending = false; this.silenceMidi(); }
    }

    // The run ended: once every queued message went out, silence the MIDI output as a port does at close.
    runEnded() {
      this.ending = true;
      if (this.midiQueue.length === 0) { this.ending = false; this.silenceMidi(); }
    }

    silenceMidi() {
      if (!this.midiOut) return;
      for (const key of this.sounding.keys()) this.send([0x80 | key >> 8, key & 0x7f, 0], undefined);
      this.sounding.clear();
      for (const channel of [...this.used].sort((x, y) => x - y)) this.send([0xb0 | channel, ALL_NOTES_OFF, 0], undefined);
    }
  }

  // The synth alone, rendered offline: steps placed at their musical time, (step - first step) x seconds per
  // step, as the built-in synth renders a run. Resolves to one Float32Array per audio channel.
  async function renderOffline(hello, steps, tailS) {
    const a = hello.arrangement, sr = a.sample_rate;
    if (!steps.length) return [];
    const first = steps[0].step, last = steps[steps.length - 1];
    const frames = roundHalfEven((last.step - first) * a.seconds_per_step * sr) + roundHalfEven(last.durationS * sr) +
      Math.ceil((tailS || 0) * sr);  // to the end of the last step, in whole frames as the built-in synth counts
    const ctx = new OfflineAudioContext(a.audio_channels, frames, sr);
    await ctx.audioWorklet.addModule(workletUrl());
    const placed = steps.map((s) => workletStep(s, roundHalfEven((s.step - first) * a.seconds_per_step * sr), sr,
                                                hello.synth.max_note_s));
    const node = new AudioWorkletNode(ctx, 'gradbridge-synth', synthOptions(hello, placed));
    node.connect(ctx.destination);
    const buffer = await ctx.startRendering();
    const out = [];
    for (let c = 0; c < buffer.numberOfChannels; c++) out.push(buffer.getChannelData(c));
    return out;
  }

  GB.Player = Player;
  GB.renderOffline = renderOffline;
})(window.gradbridge);
