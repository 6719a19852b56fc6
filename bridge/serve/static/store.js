// What the page keeps of a run, bounded however long it runs: frames in buckets (each layer's lowest and highest
// finite norm, loss and learning rate), every alarm (the first 10 000 NaN/Inf norms, the first 10 000 spike alarms
// the server sounded), and the last sound steps for the piano roll.
// A bucket holds one frame until CAPACITY buckets are full; then neighbours merge in pairs and each bucket holds
// twice as many steps, so the plots keep each stretch's extremes at any length.
'use strict';
window.gradbridge = window.gradbridge || {};

(function (GB) {
  const CAPACITY = 2048, ALARMS = 10000, SOUND_STEPS = 512;

  class FrameStore {
    constructor(layers) {
      this.layers = layers;
      this.width = 1;  // frames per full bucket
      this.count = 0;  // buckets in use
      this.filled = new Int32Array(CAPACITY);
      this.firstStep = new Float64Array(CAPACITY);
      this.lastStep = new Float64Array(CAPACITY);
      this.lo = new Float32Array(CAPACITY * layers).fill(NaN);
      this.hi = new Float32Array(CAPACITY * layers).fill(NaN);
      this.lossLo = new Float64Array(CAPACITY).fill(NaN);
      this.lossHi = new Float64Array(CAPACITY).fill(NaN);
      this.lr = new Float64Array(CAPACITY).fill(NaN);
      this.alarms = [];  // {step, layer, kind: 'nan' | '+inf' | '-inf'}
      this.spikes = [];  // {step, layer, ratio}: the spike alarms sounded (the server finds them, the page never does)
      this.spikesSeen = 0;  // spike alarms heard of, also those past the first ALARMS
      this.frames = 0;
      this.last = null;  // {step, captureS}
      this.version = 0;  // moves on with every change (plots redraw when it moved)
    }

    add(step, captureS, loss, lr, view, at) {
      if (this.count === 0 || this.filled[this.count - 1] >= this.width) {
        if (this.count === CAPACITY) this.halve();
        const b = this.count++;
        this.filled[b] = 0;
        this.firstStep[b] = step;
      }
      const b = this.count - 1, L = this.layers, base = b * L, first = this.filled[b] === 0;
      for (let i = 0; i < L; i++) {
        const x = view.getFloat32(at + 4 * i, true);
        if (!Number.isFinite(x)) {
          if (this.alarms.length < ALARMS) this.alarms.push({step, layer: i, kind: x !== x ? 'nan' : x > 0 ? '+inf' : '-inf'});
          continue;
        }
        if (first || !(this.lo[base + i] <= x)) this.lo[base + i] = x;
        if (first || !(this.hi[base + i] >= x)) this.hi[base + i] = x;
      }
      if (Number.isFinite(loss)) {
        if (!(this.lossLo[b] <= loss)) this.lossLo[b] = loss;
        if (!(this.lossHi[b] >= loss)) this.lossHi[b] = loss;
      }
      if (Number.isFinite(lr)) this.lr[b] = lr;
      this.lastStep[b] = step;
      this.filled[b]++;
      this.frames++;
      this.last = {step, captureS};
      this.version++;
    }

    halve() {  // merge bucket pairs: half the buckets, each twice as wide
      const L = this.layers;
      for (let to = 0, from = 0; from < this.count; to++, from += 2) {
        const pair = from + 1 < this.count;
        this.firstStep[to] = this.firstStep[from];
        this.lastStep[to] = this.lastStep[pair ? from + 1 : from];
        this.filled[to] = this.filled[from] + (pair ? this.filled[from + 1] : 0);
        this.lossLo[to] = pair ? minOf(this.lossLo[from], this.lossLo[from + 1]) : this.lossLo[from];
        this.lossHi[to] = pair ? maxOf(this.lossHi[from], this.lossHi[from + 1]) : this.lossHi[from];
        this.lr[to] = pair && Number.isFinite(this.lr[from + 1]) ? this.lr[from + 1] : this.lr[from];
        for (let i = 0; i < L; i++) {
          const a = from * L + i, c = (from + 1) * L + i;
          this.lo[to * L + i] = pair ? minOf(this.lo[a], this.lo[c]) : this.lo[a];
          this.hi[to * L + i] = pair ? maxOf(this.hi[a], this.hi[c]) : this.hi[a];
        }
      }
      this.count = Math.ceil(this.count / 2);
      this.lo.fill(NaN, this.count * L);
      this.hi.fill(NaN, this.count * L);
      this.lossLo.fill(NaN, this.count);
      this.lossHi.fill(NaN, this.count);
      this.lr.fill(NaN, this.count);
      this.width *= 2;
    }

    // Spike alarms, from a sound step (with its step) or from the server's history of them: [{step, layer, ratio}].
    addSpikes(marks) {
      if (!marks.length) return;
      for (const m of marks) {
        if (this.spikes.length < ALARMS) this.spikes.push({step: m.step, layer: m.layer, ratio: m.ratio});
      }
      this.spikesSeen += marks.length;
      this.version++;
    }

    // The frames held one per bucket (only while no bucket merged): [{step, norms: [...]}], NaN for an alarm.
    frameList() {
      const out = [];
      for (let b = 0; b < this.count; b++) {
        const norms = Array.from(this.lo.subarray(b * this.layers, (b + 1) * this.layers));
        out.push({step: this.firstStep[b], frames: this.filled[b], norms});
      }
      return out;
    }
  }

  function minOf(a, b) { return a !== a ? b : b !== b ? a : Math.min(a, b); }
  function maxOf(a, b) { return a !== a ? b : b !== b ? a : Math.max(a, b); }

  class SoundLog {  // the last sound steps, played or from before the page connected, for the piano roll
    constructor() { this.steps = []; this.version = 0; }
    add(step) {
      this.steps.push(step);
      if (this.steps.length > SOUND_STEPS) this.steps.splice(0, this.steps.length - SOUND_STEPS);
      this.version++;
    }
  }

  GB.FrameStore = FrameStore;
  GB.SoundLog = SoundLog;
})(window.gradbridge);
