// gradbridge's synth as an AudioWorklet: the voices of bridge/sinks/voices.py and bridge/sinks/playable.py,
// sample for sample in their definition (not their float32 rounding). Notes arrive with their start frame on
// the audio clock (currentFrame); each is mixed into the 128-frame quanta it overlaps, so timing is exact to
// the sample whatever the main thread does.
//
// Waveforms, phase in cycles p in [0, 1), all starting at 0 and rising (the square at +1):
//   sine sin(2 pi p); saw 2 * signed(p); square +1 for p < 1/2, else -1; triangle 1 - 4 |signed(p - 1/4)|,
// where signed(x) wraps x into [-1/2, 1/2). Envelope at sample k of a note of n samples:
//   max(0, min(1, k / attack_n, (n - 1 - k) / release_n)).
// Continuous phase: each layer's oscillator starts a note where its previous note ended.

const SINE = 0, TRIANGLE = 1, SQUARE = 2, SAW = 3;
const WAVES = {sine: SINE, triangle: TRIANGLE, square: SQUARE, saw: SAW};

function signed(x) {
  x -= Math.floor(x);
  return x >= 0.5 ? x - 1 : x;
}

function wave(code, p) {
  switch (code) {
    case SINE: return Math.sin(2 * Math.PI * p);
    case SAW: return 2 * signed(p);
    case SQUARE: return p - Math.floor(p) < 0.5 ? 1 : -1;
    default: return 1 - 4 * Math.abs(signed(p - 0.25));
  }
}

function panGains(pan, channels) {
  if (channels === 1) return [1];
  return [Math.sin((1 - pan) * Math.PI / 4), Math.sin((1 + pan) * Math.PI / 4)];
}

class GradbridgeSynth extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = options.processorOptions;
    this.channels = o.channels;
    this.voices = o.voices.map((v) => ({code: WAVES[v.waveform] ?? SINE, gains: panGains(v.pan, o.channels)}));
    this.phase = new Float64Array(o.voices.length);
    this.continuous = o.phase === 'continuous';
    this.attackN = Math.round(o.attack_s * sampleRate);
    this.releaseN = Math.round(o.release_s * sampleRate);
    this.edgeN = Math.round(o.alarm_edge_s * sampleRate);
    this.maxHz = Math.min(o.max_frequency_hz, sampleRate / 2);
    this.minHz = o.min_frequency_hz;
    this.alarmHz = o.alarm_frequencies_hz;
    this.alarmGains = panGains(0, o.channels).map((g) => g * o.alarm_amplitude);
    this.notes = [];
    this.port.onmessage = (event) => this.take(event.data);
    if (o.steps) for (const step of o.steps) this.take(step);
  }

  // A step: {notes: [{layer, frame, length, frequency, amplitude}], alarms: [{frame, length}]} or {stop: true}.
  take(step) {
    if (step.stop) { this.notes = []; return; }
    for (const n of step.notes) {
      const voice = this.voices[n.layer];
      if (!voice || !(n.length > 0) || !(n.frequency === n.frequency)) continue;
      const inc = Math.min(Math.max(n.frequency, this.minHz), this.maxHz) / sampleRate;
      let phase0 = 0;
      if (this.continuous) {  // a silent note moves its layer's phase on too, as in the built-in synth
        phase0 = this.phase[n.layer];
        const cycles = inc * n.length;
        this.phase[n.layer] = (phase0 + cycles - Math.floor(cycles)) % 1;
      }
      if (!(n.amplitude > 0)) continue;
      const g = Math.min(n.amplitude, 1);
      this.notes.push({start: n.frame, length: n.length, inc, phase0, code: voice.code,
                       gains: voice.gains.map((v) => v * g), attack: this.attackN, release: this.releaseN});
    }
    const spans = new Set();
    for (const a of step.alarms) {  // alarms of a step at one moment sound once: high half, then low half
      const key = a.frame + ':' + a.length;
      if (a.length < 2 || spans.has(key)) continue;
      spans.add(key);
      const half = Math.floor(a.length / 2);
      [[a.frame, half, 0], [a.frame + half, a.length - half, 1]].forEach(([start, length, which]) => {
        this.notes.push({start, length, inc: Math.min(this.alarmHz[which], this.maxHz) / sampleRate, phase0: 0,
                         code: SQUARE, gains: this.alarmGains, attack: this.edgeN, release: this.edgeN});
      });
    }
  }

  process(inputs, outputs) {
    const out = outputs[0];
    const frames = out[0].length, first = currentFrame, end = first + frames;
    const kept = [];
    for (const n of this.notes) {
      if (n.start >= end) { kept.push(n); continue; }
      const from = Math.max(n.start, first), to = Math.min(n.start + n.length, end);
      for (let t = from; t < to; t++) {
        const k = t - n.start;
        let gain = 1;
        if (n.attack) gain = Math.min(gain, k / n.attack);
        if (n.release) gain = Math.min(gain, (n.length - 1 - k) / n.release);
        if (gain <= 0) continue;
        const v = wave(n.code, n.phase0 + n.inc * k) * gain;
        for (let c = 0; c < out.length; c++) out[c][t - first] += v * n.gains[Math.min(c, n.gains.length - 1)];
      }
      if (n.start + n.length > end) kept.push(n);
    }
    this.notes = kept;
    for (const channel of out) {
      for (let i = 0; i < frames; i++) channel[i] = Math.max(-1, Math.min(1, channel[i]));
    }
    return true;
  }
}

registerProcessor('gradbridge-synth', GradbridgeSynth);
