// The page's plots, drawn on canvases: each layer's norm over steps (log scale) with alarms marked (a red line at
// a NaN or infinite norm, an amber line under a triangle at a spike alarm), loss and learning rate, and a piano
// roll of the notes that sound. Each draws at most one point pair (lowest, highest)
// per pixel column, whatever the length of the run.
'use strict';
window.gradbridge = window.gradbridge || {};

(function (GB) {
  const MARGIN = {left: 56, right: 56, top: 10, bottom: 22};
  const ALARM = '#d7263d', SPIKE = '#ffb000', AXIS = '#8a8f98', TEXT = '#c9ccd1';
  const drawn = {spikes: []};  // where the last norms drawing put each spike alarm: [{step, layer, x}] (CSS pixels)

  function layerColour(i, n) { return `hsl(${(i * 360 / Math.max(n, 1) * 7.3) % 360}, 70%, 60%)`; }

  function fit(canvas) {  // size the canvas to its box at the screen's pixel ratio; returns the 2-D context
    const ratio = window.devicePixelRatio || 1, box = canvas.getBoundingClientRect();
    const w = Math.max(50, Math.round(box.width * ratio)), h = Math.max(50, Math.round(box.height * ratio));
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, box.width, box.height);
    g.font = '11px system-ui, sans-serif';
    return {g, w: box.width, h: box.height};
  }

  function frameOf(w, h) {
    return {x0: MARGIN.left, x1: w - MARGIN.right, y0: MARGIN.top, y1: h - MARGIN.bottom};
  }

  function stepAxis(g, f, lo, hi) {
    g.fillStyle = TEXT;
    g.textAlign = 'center';
    for (let i = 0; i <= 4; i++) {
      const step = lo + (hi - lo) * i / 4, x = f.x0 + (f.x1 - f.x0) * i / 4;
      g.fillText(String(Math.round(step)), x, f.y1 + 15);
    }
  }

  // Buckets in the store -> pixel columns: for each column the first and last bucket it holds.
  function columns(store, f) {
    const n = store.count, width = Math.max(1, Math.floor(f.x1 - f.x0));
    const lo = store.firstStep[0], hi = n ? store.lastStep[n - 1] : 0, span = Math.max(hi - lo, 1);
    const cols = [];
    let current = null;
    for (let b = 0; b < n; b++) {
      const x = Math.round((store.firstStep[b] - lo) / span * (width - 1));
      if (!current || current.x !== x) { current = {x: f.x0 + x, from: b, to: b}; cols.push(current); }
      else current.to = b;
    }
    return {cols, lo, hi, span};
  }

  // Each layer's norm as a 1-pixel line, written straight into the canvas's pixels (stroking 128 long paths
  // costs far more): per pixel column, a vertical span from the layer's lowest to its highest norm there, joined
  // to the column before by a straight line. A painter works on a copy of the store, a few layers per call to
  // step(budgetMs), so that a long run with many layers never holds the page for long; the canvas changes once,
  // when every layer is done.
  function normsPainter(canvas, store) {
    const box = canvas.getBoundingClientRect(), ratio = window.devicePixelRatio || 1;
    const w = box.width, h = box.height, f = frameOf(w, h), L = store.layers, n = store.count;
    const W = Math.max(50, Math.round(w * ratio)), H = Math.max(50, Math.round(h * ratio));
    const lo = store.lo.slice(0, n * L), hi = store.hi.slice(0, n * L), alarms = store.alarms.slice();
    const spikes = store.spikes.slice();
    let min = Infinity, max = -Infinity;
    for (let i = 0; i < n * L; i++) {
      if (lo[i] > 0 && lo[i] < min) min = lo[i];
      if (hi[i] > 0 && hi[i] > max) max = hi[i];
    }
    if (!(min < Infinity)) { min = 1e-3; max = 1; }
    const top = Math.ceil(Math.log10(max) + 1e-9), bottom = Math.min(Math.floor(Math.log10(min)), top - 1);
    const X0 = Math.round(f.x0 * ratio), Y0 = Math.round(f.y0 * ratio), Y1 = Math.round(f.y1 * ratio);
    const PW = Math.max(2, Math.round((f.x1 - f.x0) * ratio)), PH = Y1 - Y0;
    const first = n ? store.firstStep[0] : 0, span = n ? Math.max(store.lastStep[n - 1] - first, 1) : 1;
    const colOf = new Int32Array(n);
    for (let b = 0; b < n; b++) colOf[b] = Math.round((store.firstStep[b] - first) / span * (PW - 1));
    const pixels = new Uint32Array(W * H);
    const scale = (PH - 1) / (top - bottom) / Math.LN10, base = Y1 - 1 + bottom * (PH - 1) / (top - bottom);
    const cols = n ? colOf[n - 1] + 1 : 0, colLo = new Float64Array(cols), colHi = new Float64Array(cols);
    const filled = new Uint8Array(cols);
    for (let b = 0; b < n; b++) filled[colOf[b]] = 1;
    let next = 0;

    function paintLayer(i) {
      colLo.fill(Infinity); colHi.fill(-Infinity);
      for (let b = 0, at = i; b < n; b++, at += L) {  // each column's lowest and highest norm of this layer
        const c = colOf[b], a = lo[at], z = hi[at];
        if (a > 0 && a < colLo[c]) colLo[c] = a;
        if (z > 0 && z > colHi[c]) colHi[c] = z;
      }
      const colour = packedColour(i, L);
      let px = -1, py = 0;
      for (let c = 0; c < cols; c++) {
        if (!(colLo[c] < Infinity)) {  // no bucket here: bridged; buckets, but no finite norm (NaN, Inf): a gap
          if (filled[c]) px = -1;
          continue;
        }
        const yHi = Math.round(base - Math.log(colHi[c]) * scale), yLo = Math.round(base - Math.log(colLo[c]) * scale);
        if (px >= 0 && c - px > 1) {  // a straight line across the columns in between
          let yPrev = py;
          for (let k = px + 1; k < c; k++) {
            const y = Math.round(py + (yHi - py) * (k - px) / (c - px));
            fillSpan(pixels, W, X0 + k, Math.min(y, yPrev), Math.max(y, yPrev), colour);
            yPrev = y;
          }
        }
        fillSpan(pixels, W, X0 + c, px >= 0 ? Math.min(yHi, py) : yHi, px >= 0 ? Math.max(yLo, py) : yLo, colour);
        px = c;
        py = (yHi + yLo) >> 1;
      }
    }

    function finish() {
      const {g} = fit(canvas);
      if (!n) return;
      g.putImageData(new ImageData(new Uint8ClampedArray(pixels.buffer), W, H), 0, 0);
      const y = (v) => f.y1 - (Math.log10(v) - bottom) / (top - bottom) * (f.y1 - f.y0);
      g.strokeStyle = AXIS; g.fillStyle = TEXT; g.textAlign = 'right'; g.lineWidth = 1;
      for (let e = bottom; e <= top; e++) {
        const yy = y(Math.pow(10, e));
        g.globalAlpha = 0.25; g.beginPath(); g.moveTo(f.x0, yy); g.lineTo(f.x1, yy); g.stroke(); g.globalAlpha = 1;
        g.fillText('1e' + e, f.x0 - 4, yy + 4);
      }
      stepAxis(g, f, first, first + span);
      g.strokeStyle = ALARM; g.fillStyle = ALARM; g.globalAlpha = 0.8;
      g.beginPath();
      for (const alarm of alarms) {  // a red line at every step with a NaN or infinite norm
        const x = Math.round(f.x0 + (alarm.step - first) / span * (f.x1 - f.x0)) + 0.5;
        g.moveTo(x, f.y0); g.lineTo(x, f.y1);
      }
      g.stroke();
      drawn.spikes = [];
      g.strokeStyle = SPIKE; g.globalAlpha = 0.8; g.setLineDash([3, 3]);
      g.beginPath();
      const marks = new Path2D();
      for (const spike of spikes) {  // an amber dashed line under a triangle at every step with a spike alarm
        const x = Math.round(f.x0 + (spike.step - first) / span * (f.x1 - f.x0)) + 0.5;
        g.moveTo(x, f.y0 + 6); g.lineTo(x, f.y1);
        marks.moveTo(x - 4, f.y0); marks.lineTo(x + 4, f.y0); marks.lineTo(x, f.y0 + 7); marks.closePath();
        drawn.spikes.push({step: spike.step, layer: spike.layer, x});
      }
      g.stroke();
      g.setLineDash([]);
      g.globalAlpha = 1;
      g.fillStyle = SPIKE;
      g.fill(marks);
      g.textAlign = 'left';
      g.fillStyle = ALARM;
      if (alarms.length) g.fillText(`${alarms.length} NaN/Inf`, f.x1 + 4, f.y0 + 10);
      g.fillStyle = SPIKE;
      const seen = store.spikesSeen;
      if (spikes.length) g.fillText(`${seen} spike${seen === 1 ? '' : 's'}`, f.x1 + 4, f.y0 + 24);
    }

    return {
      step(budgetMs) {  // paint layers for about budgetMs; true once the canvas shows them all
        const until = performance.now() + budgetMs;
        while (next < L && (next === 0 || performance.now() < until)) paintLayer(next++);
        if (next < L) return false;
        finish();
        return true;
      },
    };
  }

  function drawNorms(canvas, store) {
    const painter = normsPainter(canvas, store);
    while (!painter.step(Infinity));
  }

  function fillSpan(pixels, width, x, from, to, colour) {
    for (let y = from; y <= to; y++) pixels[y * width + x] = colour;
  }

  const packed = new Map();
  function packedColour(i, n) {  // the layer's colour as one little-endian RGBA pixel
    const key = i + '/' + n;
    if (!packed.has(key)) {
      const probe = document.createElement('canvas').getContext('2d');
      probe.fillStyle = layerColour(i, n);
      probe.fillRect(0, 0, 1, 1);
      const [r, gr, b] = probe.getImageData(0, 0, 1, 1).data;
      packed.set(key, ((255 << 24) | (b << 16) | (gr << 8) | r) >>> 0);
    }
    return packed.get(key);
  }

  function drawLossLr(canvas, store) {
    const {g, w, h} = fit(canvas), f = frameOf(w, h);
    if (!store.count) return;
    const {cols, lo, span} = columns(store, f);
    stepAxis(g, f, lo, lo + span);
    const series = [
      {name: 'loss', lo: store.lossLo, hi: store.lossHi, colour: '#f0a202', side: 'left'},
      {name: 'lr', lo: store.lr, hi: store.lr, colour: '#4ea5d9', side: 'right'},
    ];
    for (const s of series) {
      let min = Infinity, max = -Infinity;
      for (let b = 0; b < store.count; b++) {
        if (s.lo[b] < min) min = s.lo[b];
        if (s.hi[b] > max) max = s.hi[b];
      }
      if (!(min <= max)) continue;
      if (min === max) { min -= Math.abs(min) * 0.1 || 1; max += Math.abs(max) * 0.1 || 1; }
      const y = (v) => f.y1 - (v - min) / (max - min) * (f.y1 - f.y0);
      g.fillStyle = s.colour; g.strokeStyle = s.colour;
      g.textAlign = s.side === 'left' ? 'right' : 'left';
      const tx = s.side === 'left' ? f.x0 - 4 : f.x1 + 4;
      g.fillText(max.toPrecision(3), tx, f.y0 + 10);
      g.fillText(min.toPrecision(3), tx, f.y1);
      g.fillText(s.name, tx, (f.y0 + f.y1) / 2);
      g.beginPath();
      let drawing = false;
      for (const c of cols) {
        let a = Infinity, b = -Infinity;
        for (let k = c.from; k <= c.to; k++) { if (s.lo[k] < a) a = s.lo[k]; if (s.hi[k] > b) b = s.hi[k]; }
        if (!(a <= b)) { drawing = false; continue; }
        if (drawing) g.lineTo(c.x, y(b)); else g.moveTo(c.x, y(b));
        if (a !== b) g.lineTo(c.x, y(a));
        drawing = true;
      }
      g.stroke();
    }
  }

  // The last sound steps side by side: a bar per note at its pitch (MIDI note), its place and length within the
  // step; alarms as red bars along the top, spike alarms as amber bars just under them.
  function drawPianoRoll(canvas, log, layers, shown) {
    const {g, w, h} = fit(canvas), f = frameOf(w, h);
    const steps = log.steps.slice(-shown);
    if (!steps.length) return;
    let low = 127, high = 0;
    for (const s of steps) for (const n of s.notes) { low = Math.min(low, n.midiNote); high = Math.max(high, n.midiNote); }
    if (low > high) { low = 48; high = 84; }
    low -= 1; high += 1;
    const colW = (f.x1 - f.x0) / shown, rowH = (f.y1 - f.y0 - 8) / (high - low + 1);
    g.fillStyle = TEXT; g.textAlign = 'right';
    for (let note = Math.ceil(low / 12) * 12; note <= high; note += 12) {
      g.fillText('C' + (note / 12 - 1), f.x0 - 4, f.y1 - (note - low + 0.5) * rowH + 4);
    }
    for (const past of [true, false]) {  // one path per layer (and per faded or not): a fill each, not a note each
      const paths = new Map();
      steps.forEach((s, k) => {
        if (s.past !== past) return;
        const x = f.x0 + (shown - steps.length + k) * colW, scale = colW / Math.max(s.durationS, 1e-6);
        for (const n of s.notes) {
          if (!paths.has(n.layer)) paths.set(n.layer, new Path2D());
          paths.get(n.layer).rect(x + n.offsetS * scale, f.y1 - (n.midiNote - low + 1) * rowH,
                                  Math.max(1, Math.min(n.durationS, s.durationS) * scale - 1), Math.max(1, rowH - 1));
        }
        if (s.alarms.length && !paths.has(-1)) paths.set(-1, new Path2D());
        for (const a of s.alarms) paths.get(-1).rect(x + a.offsetS * scale, f.y0, Math.max(2, a.durationS * scale - 1), 6);
        if (s.spikes.length && !paths.has(-2)) paths.set(-2, new Path2D());
        for (const a of s.spikes) {
          paths.get(-2).rect(x + a.offsetS * scale, f.y0 + 7, Math.max(2, a.durationS * scale - 1), 6);
        }
      });
      g.globalAlpha = past ? 0.5 : 1;
      for (const [layer, path] of paths) {
        g.fillStyle = layer === -1 ? ALARM : layer === -2 ? SPIKE : layerColour(layer, layers);
        g.fill(path);
      }
    }
    g.globalAlpha = 1;
    g.textAlign = 'center'; g.fillStyle = TEXT;
    g.fillText(`last ${steps.length} sounded steps (steps ${steps[0].step}–${steps[steps.length - 1].step})`,
               (f.x0 + f.x1) / 2, f.y1 + 15);
  }

  GB.plots = {normsPainter, drawNorms, drawLossLr, drawPianoRoll, layerColour, drawn, SPIKE};
})(window.gradbridge);
