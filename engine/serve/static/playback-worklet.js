// The interviewer's voice: a queue of responses (pcm16, 24 kHz, mono) played in order, and a
// report of exactly what has been rendered, counted in samples of the 24 kHz source.
//
// Commands (from the page):   {type: "chunk", response, item, pcm: Int16Array}
//                             {type: "end", response}     no more audio for it
//                             {type: "stop"}              barge-in: flush everything now
// Reports (to the page):      {type: "started", response, item}          its first sample rendered
//                             {type: "progress", item, played_ms}        about every 100 ms
//                             {type: "done", response, item, played_ms}  its last sample rendered
//                             {type: "stopped", response, item, played_ms, dropped}
//                             {type: "playing", on}                      for the page's "speaking"
// The same rules as the engine's other players (engine/audio.py): responses play one after
// another in the order first seen; a gap in a response's audio is silence; after stop, every
// response not yet done is dropped (later audio for it is ignored) and `played_ms` is what was
// rendered of the item that was playing.

const SOURCE_RATE = 24000;
const PROGRESS_EVERY = Math.round(sampleRate / 10);

class Playback extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = SOURCE_RATE / sampleRate; // source samples per output sample
    this.queue = []; // responses not yet done, in play order
    this.byId = new Map();
    this.finished = new Set(); // done or dropped: later audio is ignored
    this.itemPlayed = new Map(); // item -> source samples rendered
    this.pos = 0; // position in the head chunk, in source samples
    this.last = null; // {response, item} of the last rendered sample
    this.playing = false;
    this.sinceProgress = 0;
    this.port.onmessage = (e) => this.command(e.data);
  }

  command(m) {
    if (m.type === "chunk") {
      const r = this.response(m.response);
      if (r && !r.ended && m.pcm.length) r.chunks.push({ item: m.item, pcm: m.pcm });
    } else if (m.type === "end") {
      const r = this.response(m.response);
      if (r) r.ended = true;
    } else if (m.type === "stop") {
      this.stop();
    }
  }

  response(id) {
    if (this.finished.has(id)) return null;
    let r = this.byId.get(id);
    if (!r) {
      r = { id, chunks: [], ended: false, samples: 0, item: null, started: false };
      this.byId.set(id, r);
      this.queue.push(r);
    }
    return r;
  }

  stop() {
    const head = this.queue[0];
    // Playing: the head response has sounded and is not done (it may be between two chunks).
    const playing = head && head.started ? { response: head.id, item: head.item } : null;
    const playedMs = playing && playing.item !== null ? this.ms(this.itemPlayed.get(playing.item) || 0) : 0;
    const dropped = this.queue.map((r) => r.id);
    for (const id of dropped) this.finished.add(id);
    this.queue = [];
    this.byId.clear();
    this.pos = 0;
    this.port.postMessage({
      type: "stopped", response: playing ? playing.response : null, item: playing ? playing.item : null,
      played_ms: playedMs, dropped,
    });
    this.setPlaying(false);
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let i = 0;
    while (i < out.length && this.queue.length) {
      const r = this.queue[0];
      if (!r.chunks.length) {
        if (!r.ended) break; // waiting for more of its audio: silence meanwhile
        this.finish(r);
        continue;
      }
      const c = r.chunks[0];
      if (!r.started) {
        r.started = true;
        this.port.postMessage({ type: "started", response: r.id, item: c.item });
      }
      r.item = c.item;
      const start = Math.floor(this.pos);
      while (i < out.length && this.pos < c.pcm.length) {
        const k = Math.floor(this.pos);
        const f = this.pos - k;
        const a = c.pcm[k];
        const b = k + 1 < c.pcm.length ? c.pcm[k + 1] : a;
        out[i++] = (a + (b - a) * f) / 32768;
        this.pos += this.step;
      }
      const rendered = Math.min(Math.floor(this.pos), c.pcm.length) - start;
      r.samples += rendered;
      this.itemPlayed.set(c.item, (this.itemPlayed.get(c.item) || 0) + rendered);
      this.last = { response: r.id, item: c.item };
      if (this.pos >= c.pcm.length) {
        this.pos -= c.pcm.length;
        r.chunks.shift();
      }
    }
    out.fill(0, i);
    for (let ch = 1; ch < outputs[0].length; ch++) outputs[0][ch].set(out);
    this.setPlaying(i > 0);
    this.sinceProgress += out.length;
    if (this.sinceProgress >= PROGRESS_EVERY && this.last) {
      this.sinceProgress = 0;
      const item = this.last.item;
      this.port.postMessage({ type: "progress", item, played_ms: this.ms(this.itemPlayed.get(item) || 0) });
    }
    return true;
  }

  finish(r) {
    this.queue.shift();
    this.byId.delete(r.id);
    this.finished.add(r.id);
    this.pos = 0;
    this.port.postMessage({ type: "done", response: r.id, item: r.item, played_ms: this.ms(r.samples) });
  }

  setPlaying(on) {
    if (on !== this.playing) {
      this.playing = on;
      this.port.postMessage({ type: "playing", on });
    }
  }

  ms(samples) {
    return Math.round((samples * 1000) / SOURCE_RATE);
  }
}

registerProcessor("playback", Playback);
