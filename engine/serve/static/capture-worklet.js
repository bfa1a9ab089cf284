// Microphone capture: the context's rate (44.1 or 48 kHz, usually) -> pcm16, 24 kHz, mono, in
// 40 ms frames posted to the page, which sends them to the engine as binary WebSocket frames.
//
// Resampling: an exact 2:1 (48 kHz) averages pairs; any other rate interpolates linearly between
// the two nearest input samples, carrying the position across render quanta.

const OUT_RATE = 24000;
const FRAME = 960; // 40 ms at 24 kHz

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.pos = 0; // where the next output sample lies, in input samples from `this.prev`
    this.prev = 0; // the last input sample of the previous quantum
    this.frame = new Int16Array(FRAME);
    this.n = 0;
  }

  process(inputs, outputs) {
    const input = inputs[0] && inputs[0][0];
    if (input) {
      if (this.step === 2) {
        for (let i = 0; i + 1 < input.length; i += 2) this.push((input[i] + input[i + 1]) / 2);
      } else {
        // Position 0 is `prev`, positions 1..n are input[0..n-1].
        while (this.pos <= input.length) {
          const k = Math.floor(this.pos);
          const f = this.pos - k;
          const a = k === 0 ? this.prev : input[k - 1];
          const b = k < input.length ? input[k] : a;
          this.push(a + (b - a) * f);
          this.pos += this.step;
        }
        this.pos -= input.length;
        this.prev = input[input.length - 1];
      }
    }
    const out = outputs[0] && outputs[0][0];
    if (out) out.fill(0); // connected to the destination only so that it runs; it plays nothing
    return true;
  }

  push(x) {
    const s = Math.max(-1, Math.min(1, x));
    this.frame[this.n++] = s < 0 ? s * 0x8000 : s * 0x7fff;
    if (this.n === FRAME) {
      this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
      this.frame = new Int16Array(FRAME);
      this.n = 0;
    }
  }
}

registerProcessor("capture", Capture);
