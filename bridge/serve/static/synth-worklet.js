// gradbridge's synth as an AudioWorklet: the voices of bridge/sinks/voices.py and bridge/sinks/playable.py and the
// limiter of bridge/sinks/synth.py, sample for sample in their definition (not their float32 rounding). Notes
// arrive with their start frame on the audio clock (currentFrame); each is mixed into the 128-frame quanta it
// overlaps, so timing is exact to the sample whatever the main thread does.
//
// Waveforms, phase in cycles p in [0, 1), all starting at 0 and rising (the square at +1):
//   sine sin(2 pi p); saw 2 * signed(p); square +1 for p < 1/2, else -1; triangle 1 - 4 |signed(p - 1/4)|,
// where signed(x) wraps x into [-1/2, 1/2). Envelope at sample k of a note of n samples:
//   max(0, min(1, k / attack_n, (n - 1 - k) / release_n)).
// Continuous phase: each layer's oscillator starts a note where its previous note ended; the layers start spread
// over the cycle (voice i at i x 0.618... cycles), kept as the built-in synth keeps them, in 64-bit fixed point.
// The NaN/Inf alarm: a square beep, its first half at alarm_frequencies_hz[0], its second at [1]; the spike alarm
// the same at spike_frequencies_hz, each at its own amplitude, centred. The mix goes through the soft limiter:
// the identity up to limit_knee in magnitude, above it knee + (peak - knee) tanh((|x| - knee) / (peak - knee)).

const SINE = 0, TRIANGLE = 1, SQUARE = 2, SAW = 3;
const WAVES = {sine: SINE, triangle: TRIANGLE, square: SQUARE, saw: SAW};
const CYCLE = 2 ** 64, MASK = (1n << 64n) - 1n, GOLDEN = 11400714819323198485n;  // (sqrt(5) - 1) / 2 cycle

// x rounded to the nearest integer, halves to the even one, as Python's round and NumPy's rint (Math.round takes
// halves up: 0.005 s at 44.1 kHz, 220.5 samples, would be 221 here and 220 in the built-in synth).
function roundHalfEven(x) {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

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
    this.continuous = o.phase === 'continuous';
    this.voices = new Map();  // layer index -> {code, gains, slot}
    o.voices.forEach((v, slot) => {
      this.voices.set(v.index ?? slot, {code: WAVES[v.waveform] ?? SINE, gains: panGains(v.pan, o.channels), slot});
    });
    // each voice's phase in 2^-64 cycle, as bridge/sinks/playable.py keeps it
    this.phase = o.voices.map((_, slot) => (this.continuous ? BigInt(slot) * GOLDEN & MASK : 0n));
    this.attackN = roundHalfEven(o.attack_s * sampleRate);
    this.releaseN = roundHalfEven(o.release_s * sampleRate);
    this.edgeN = roundHalfEven(o.alarm_edge_s * sampleRate);
    this.maxHz = Math.min(o.max_frequency_hz, sampleRate / 2);
    this.minHz = o.min_frequency_hz;
    this.beeps = {
      alarms: {hz: o.alarm_frequencies_hz, gains: panGains(0, o.channels).map((g) => g * o.alarm_amplitude)},
      spikes: {hz: o.spike_frequencies_hz, gains: panGains(0, o.channels).map((g) => g * o.spike_amplitude)},
    };
    this.knee = o.limit_knee;
    this.peak = o.peak;
    this.notes = [];
    this.port.onmessage = (event) => this.take(event.data);
    if (o.steps) for (const step of o.steps) this.take(step);
  }

  // A step: {notes: [{layer, frame, length, frequency, amplitude}], alarms: [{frame, length}], spikes: [{frame,
  // length}]} or {stop: true}.
  take(step) {
    if (step.stop) { this.notes = []; return; }
    for (const n of step.notes) {
      const voice = this.voices.get(n.layer);
      if (!voice || !(n.length > 0) || !(n.frequency === n.frequency)) continue;
      const inc = Math.min(Math.max(n.frequency, this.minHz), this.maxHz) / sampleRate;
      let phase0 = 0;
      if (this.continuous) {  // a silent note moves its layer's phase on too, as in the built-in synth
        const fixed = this.phase[voice.slot], cycles = inc * n.length;
        phase0 = Number(fixed) / CYCLE;
        this.phase[voice.slot] = (fixed + BigInt(Math.floor((cycles - Math.floor(cycles)) * CYCLE))) & MASK;
      }
      if (!(n.amplitude > 0)) continue;
      const g = Math.min(n.amplitude, 1);
      this.notes.push({start: n.frame, length: n.length, inc, phase0, code: voice.code,
                       gains: voice.gains.map((v) => v * g), attack: this.attackN, release: this.releaseN});
    }
    this.takeBeeps(step.alarms, this.beeps.alarms);
    this.takeBeeps(step.spikes || [], this.beeps.spikes);
  }

  // A step's alarms (or spike alarms): those at one moment sound once, as two square notes, one per half.
  takeBeeps(alarms, beep) {
    const spans = new Set();
    for (const a of alarms) {
      const key = a.frame + ':' + a.length;
      if (a.length < 2 || spans.has(key)) continue;
      spans.add(key);
      const half = Math.floor(a.length / 2);
      [[a.frame, half, 0], [a.frame + half, a.length - half, 1]].forEach(([start, length, which]) => {
        this.notes.push({start, length, inc: Math.min(beep.hz[which], this.maxHz) / sampleRate, phase0: 0,
                         code: SQUARE, gains: beep.gains, attack: this.edgeN, release: this.edgeN});
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
    const knee = this.knee, head = this.peak - this.knee;
    for (const channel of out) {
      for (let i = 0; i < frames; i++) {
        const x = channel[i], m = Math.abs(x);
        if (m > knee) channel[i] = Math.sign(x) * Math.min(knee + head * Math.tanh((m - knee) / head), this.peak);
      }
    }
    return true;
  }
}

registerProcessor('gradbridge-synth', GradbridgeSynth);
