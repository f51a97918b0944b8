// Plays a stream of raw int16 little-endian mono PCM (the server's 24 kHz audio) while it arrives: each network
// chunk becomes an AudioBuffer scheduled right after the previous one, so playback starts with the first chunk.
// Its state is written to an element's data attributes (data-state, data-bytes, data-ttfa-ms,
// data-audio-context), which the page shows and the browser test reads.

export const SAMPLE_RATE = 24000;
const START_LEAD_S = 0.05; // schedule slightly ahead of "now", so that the first buffer is not clipped

export class PcmStreamPlayer {
  constructor(stateElement, onChange) {
    this.el = stateElement;
    this.onChange = onChange;
    this.ctx = null;
    this.sources = new Set();
    this.setState("idle");
  }

  setState(state, extra = {}) {
    this.el.dataset.state = state;
    for (const [key, value] of Object.entries(extra)) this.el.dataset[key] = String(value);
    this.onChange(this.el.dataset);
  }

  // Reads `response.body` to its end, scheduling audio as it comes; resolves when the stream ends, with the
  // number of bytes received. `startedAt` is the performance.now() of the user's click (for time to first audio).
  async play(response, startedAt) {
    this.stop();
    this.ctx = new AudioContext({ sampleRate: SAMPLE_RATE });
    await this.ctx.resume();
    this.reader = response.body.getReader();
    this.nextTime = 0;
    this.pending = 0;
    this.streamDone = false;
    let bytes = 0;
    let carry = null; // an odd byte left from the previous chunk (a sample split across two chunks)
    this.setState("streaming", { bytes: 0, ttfaMs: "", audioContext: this.ctx.state });
    for (;;) {
      const { value, done } = await this.reader.read();
      if (done) break;
      if (bytes === 0) this.el.dataset.ttfaMs = String(Math.round(performance.now() - startedAt));
      bytes += value.length;
      let data = value;
      if (carry !== null) {
        data = new Uint8Array(value.length + 1);
        data[0] = carry;
        data.set(value, 1);
        carry = null;
      }
      if (data.length % 2) {
        carry = data[data.length - 1];
        data = data.subarray(0, data.length - 1);
      }
      this.schedule(data);
      this.el.dataset.bytes = String(bytes);
      this.onChange(this.el.dataset);
    }
    this.streamDone = true;
    this.finishIfPlayed();
    return bytes;
  }

  schedule(bytes) {
    if (!bytes.length || !this.ctx) return;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    const buffer = this.ctx.createBuffer(1, bytes.length / 2, SAMPLE_RATE);
    const channel = buffer.getChannelData(0);
    for (let i = 0; i < channel.length; i++) channel[i] = view.getInt16(2 * i, true) / 32768;
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.ctx.destination);
    const at = Math.max(this.nextTime, this.ctx.currentTime + START_LEAD_S);
    source.start(at);
    this.nextTime = at + buffer.duration;
    this.sources.add(source);
    this.pending += 1;
    source.onended = () => {
      this.sources.delete(source);
      this.pending -= 1;
      this.finishIfPlayed();
    };
    if (this.el.dataset.state === "streaming") this.markPlayingAt(at);
  }

  // "playing" once the audio clock passes the first buffer's start time: the browser is really playing it.
  markPlayingAt(at) {
    const ctx = this.ctx;
    const check = () => {
      if (this.ctx !== ctx || this.el.dataset.state !== "streaming") return;
      if (ctx.state === "running" && ctx.currentTime >= at) {
        this.setState("playing", { audioContext: ctx.state });
      } else {
        setTimeout(check, 20);
      }
    };
    check();
  }

  finishIfPlayed() {
    if (this.streamDone && this.pending === 0 && ["streaming", "playing"].includes(this.el.dataset.state)) {
      this.setState("done");
    }
  }

  stop() {
    if (this.reader) this.reader.cancel().catch(() => {});
    for (const source of this.sources) source.stop();
    this.sources.clear();
    if (this.ctx) this.ctx.close();
    this.ctx = null;
    this.reader = null;
  }
}
