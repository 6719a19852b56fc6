// The page: connects to the server's WebSocket (reconnecting by itself), keeps the run (store.js), draws it
// (plots.js), plays it and routes it to Web MIDI (player.js). `window.gradbridge.stats` says what it received.
'use strict';
window.gradbridge = window.gradbridge || {};

(function (GB) {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  GB.token = params.get('token') || '';
  const NORMS_EVERY_MS = 250, ROLL_EVERY_MS = 100, PAINT_BUDGET_MS = 8;

  const stats = GB.stats = {state: 'connecting', framesReceived: 0, soundReceived: 0, soundPlayed: 0,
                            connections: 0, lastLagS: NaN, lags: [], animationFrames: 0, longTasks: 0,
                            longTaskMs: 0, ended: false, serverFrames: 0, normsDraws: 0, normsDrawMs: 0,
                            rollDrawMs: 0, decodeMs: 0, spikes: 0};
  const player = GB.player = new GB.Player();
  let hello = null, store = null, sounds = new GB.SoundLog(), clockOffsetS = 0, socket = null, retryMs = 500;
  let drawnNorms = -1, drawnSounds = -1, normsAt = 0, rollAt = 0, normsEveryMs = NORMS_EVERY_MS;
  let painter = null, paintMs = 0;

  function setState(text, kind) {
    stats.state = kind;
    $('state').textContent = text;
    $('state').className = 'state ' + kind;
  }

  function connect() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    socket = new WebSocket(`${scheme}//${location.host}/ws?token=${encodeURIComponent(GB.token)}`);
    socket.binaryType = 'arraybuffer';
    setState(stats.connections ? 'reconnecting…' : 'connecting…', 'connecting');
    socket.onmessage = (event) => (typeof event.data === 'string' ? onText(JSON.parse(event.data)) : onBinary(event.data));
    socket.onclose = (event) => {
      socket = null;
      if (stats.state === 'live' || stats.state === 'ended') retryMs = 500;
      const why = event.code === 1013 ? ' (this page fell behind)' : stats.connections ? '' :
        ' (if it never connects, the server may have restarted with a new token: open the address it printed)';
      setState(`disconnected${why}; reconnecting in ${(retryMs / 1000).toFixed(1)} s`, 'down');
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 5000);
    };
  }

  function onText(message) {
    const nowS = Date.now() / 1000;
    if (message.type === 'hello') {
      hello = GB.hello = message;
      stats.connections++;
      stats.framesReceived = 0;
      stats.spikes = 0;
      stats.ended = false;
      clockOffsetS = nowS - message.server_time_s;
      store = GB.store = new GB.FrameStore(message.layer_names.length);
      sounds = GB.sounds = new GB.SoundLog();
      drawnNorms = drawnSounds = -1;
      painter = null;
      player.setHello(message);
      showRun(message);
      setState('live', 'live');
    } else if (message.type === 'status') {
      clockOffsetS = Math.min(clockOffsetS, nowS - message.server_time_s);  // the quickest trip is the truest
      stats.serverFrames = message.frames;
      const thinned = hello ? hello.frames_seen - hello.history_frames : 0;  // history steps never sent here
      $('behind').textContent = String(Math.max(0, message.frames - thinned - stats.framesReceived));
      $('pages').textContent = String(message.pages);
    } else if (message.type === 'end') {
      stats.ended = true;
      player.runEnded();
      setState(`the run ended after ${message.frames} steps`, 'ended');
    }
  }

  function onBinary(buffer) {
    const kind = new DataView(buffer).getUint8(0);
    if (kind === GB.protocol.FRAMES && store) {
      const began = performance.now();
      GB.protocol.eachRecord(buffer, store.layers, (step, captureS, loss, lr, view, at) => {
        store.add(step, captureS, loss, lr, view, at);
      });
      stats.decodeMs += performance.now() - began;
      stats.framesReceived = store.frames;
      if (store.last) {
        stats.lastLagS = Date.now() / 1000 - clockOffsetS - store.last.captureS;
        stats.lags.push(stats.lastLagS);
        if (stats.lags.length > 4096) stats.lags.splice(0, 2048);
      }
    } else if (kind === GB.protocol.SOUND || kind === GB.protocol.SOUND_PAST) {
      const step = GB.protocol.decodeSound(buffer);
      sounds.add(step);
      if (!step.past) {  // the spikes of steps from before the page connected came in the SPIKES message
        stats.soundReceived++;
        if (store) store.addSpikes(step.spikes.map((s) => ({step: step.step, layer: s.layer, ratio: s.ratio})));
        if (player.schedule(step)) stats.soundPlayed++;
      }
    } else if (kind === GB.protocol.SPIKES && store) {
      store.addSpikes(GB.protocol.decodeSpikes(buffer));
    }
    if (store) stats.spikes = store.spikesSeen;
  }

  function showRun(message) {
    const a = message.arrangement;
    $('title').textContent = message.where ? `gradbridge · ${message.where}` : 'gradbridge';
    $('preset').textContent = a.description;
    const list = $('layers');
    list.replaceChildren();
    message.layer_names.forEach((name, i) => {
      const item = document.createElement('li');
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = GB.plots.layerColour(i, message.layer_names.length);
      const voice = a.voices[i];
      item.append(swatch, `${name} · ch ${voice.channel + 1} · ${voice.waveform}`);
      list.append(item);
    });
    $('layer-count').textContent = String(message.layer_names.length);
  }

  function draw(now) {
    stats.animationFrames++;
    if (store) {
      if (!painter && store.version !== drawnNorms && now - normsAt >= normsEveryMs) {
        drawnNorms = store.version;
        normsAt = now;
        painter = GB.plots.normsPainter($('norms'), store);
        paintMs = 0;
      }
      if (painter) {  // a few layers each animation frame
        const began = performance.now();
        const done = painter.step(PAINT_BUDGET_MS);
        if (done) GB.plots.drawLossLr($('losslr'), store);
        paintMs += performance.now() - began;
        stats.normsDrawMs += performance.now() - began;
        if (done) {
          painter = null;
          stats.normsDraws++;
          normsEveryMs = Math.max(NORMS_EVERY_MS, 5 * paintMs);  // drawing takes at most a sixth of the time
        }
      }
      if (sounds.version !== drawnSounds && now - rollAt >= ROLL_EVERY_MS) {
        drawnSounds = sounds.version;
        rollAt = now;
        const began = performance.now();
        GB.plots.drawPianoRoll($('roll'), sounds, store.layers, 64);
        stats.rollDrawMs += performance.now() - began;
      }
      $('steps').textContent = String(stats.framesReceived);
      $('last-step').textContent = store.last ? String(store.last.step) : '–';
      $('lag').textContent = Number.isFinite(stats.lastLagS) ? `${stats.lastLagS.toFixed(2)} s` : '–';
      $('played').textContent = String(stats.soundPlayed);
      $('spikes').textContent = String(stats.spikes);
    }
    requestAnimationFrame(draw);
  }

  async function togglePlay() {
    const button = $('play');
    if (player.playing) { player.stop(); button.textContent = 'Play'; return; }
    try {
      await player.play();
      button.textContent = 'Stop';
      $('sound-note').textContent = '';
    } catch (error) {
      $('sound-note').textContent = String(error.message || error);
    }
  }

  async function setUpMidi() {
    const select = $('midi');
    if (!navigator.requestMIDIAccess) { $('midi-note').textContent = 'Web MIDI is not available in this browser'; return; }
    let access;
    try { access = await navigator.requestMIDIAccess({sysex: false}); } catch (error) {
      $('midi-note').textContent = `Web MIDI refused: ${error.message || error}`;
      return;
    }
    const fill = () => {
      const chosen = select.value;
      select.replaceChildren(new Option('(none)', ''));
      for (const output of access.outputs.values()) select.append(new Option(output.name, output.id));
      select.value = [...select.options].some((o) => o.value === chosen) ? chosen : '';
    };
    fill();
    access.onstatechange = fill;
    select.onchange = () => player.setMidiOutput(select.value ? access.outputs.get(select.value) : null);
  }

  if ('PerformanceObserver' in window && PerformanceObserver.supportedEntryTypes.includes('longtask')) {
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) { stats.longTasks++; stats.longTaskMs += entry.duration; }
    }).observe({type: 'longtask', buffered: true});
  }

  $('play').onclick = togglePlay;
  $('midi-enable').onclick = () => {  // the browser asks the listener for MIDI only once they want it
    $('midi-enable').hidden = true;
    $('midi-pick').hidden = false;
    setUpMidi();
  };
  if (!player.available) $('sound-note').textContent = 'sound and MIDI need a secure context: open the page at http://127.0.0.1 (through an SSH tunnel) or localhost';
  connect();
  requestAnimationFrame(draw);
})(window.gradbridge);
