// Logs that may be far larger than the page: a capped in-memory tail for live lines, the whole
// stored log kept as bytes with a line index, and a view that only ever renders the rows in
// sight (fixed-height rows), so a 100 MB log costs a few dozen DOM nodes.

import { render } from "./ansi.js";

const ROW_PX = 18; // must match .log-row in style.css
const MAX_SCROLL_PX = 8_000_000; // browsers cap element heights; taller logs scroll scaled
const MAX_RENDERED_CHARS = 4_000; // a 64 KiB line is shown cut, not laid out whole
const LIVE_LINE_BUDGET = 200_000;

// Live lines of every commit of a run, at most `budget` in all: past it, the oldest lines of
// the biggest log go (the stored log still has them).
export class LiveLogs {
  constructor(budget = LIVE_LINE_BUDGET) {
    this.budget = budget;
    this.total = 0;
    this.logs = new Map();
  }

  of(sha) {
    if (!this.logs.has(sha)) this.logs.set(sha, new LiveLines());
    return this.logs.get(sha);
  }

  append(sha, lines) {
    this.of(sha).push(lines);
    this.total += lines.length;
    while (this.total > this.budget) this.total -= this.biggest().dropHead(Math.ceil(this.budget / 10));
  }

  biggest() {
    let biggest = null;
    for (const log of this.logs.values())
      if (!biggest || log.lines.length > biggest.lines.length) biggest = log;
    return biggest;
  }
}

class LiveLines {
  constructor() {
    this.lines = [];
    this.dropped = 0; // lines cut from the head, so line numbers stay true
  }

  get length() {
    return this.lines.length;
  }

  get firstNumber() {
    return this.dropped + 1;
  }

  line(i) {
    return this.lines[i];
  }

  push(lines) {
    for (const line of lines) this.lines.push(line);
  }

  dropHead(count) {
    const n = Math.min(count, this.lines.length);
    this.lines.splice(0, n);
    this.dropped += n;
    return n;
  }
}

// A stored log as raw byte chunks plus the offset where each line starts: a 100 MB log is
// 100 MB of bytes, not 200 MB of UTF-16 strings, and only lines in view are ever decoded.
export class StoredLog {
  constructor() {
    this.chunks = [];
    this.chunkStarts = [];
    this.size = 0;
    this.starts = new Float64Array(1 << 16);
    this.lineCount = 1; // starts[0] = 0: the first line starts at the first byte
    this.decoder = new TextDecoder();
    this.firstNumber = 1;
  }

  get length() {
    // A final newline ends the last line; it does not begin an empty one.
    return this.size > this.starts[this.lineCount - 1] ? this.lineCount : this.lineCount - 1;
  }

  append(bytes) {
    this.chunks.push(bytes);
    this.chunkStarts.push(this.size);
    for (let i = bytes.indexOf(10); i !== -1; i = bytes.indexOf(10, i + 1)) this.addStart(this.size + i + 1);
    this.size += bytes.length;
  }

  addStart(offset) {
    if (this.lineCount === this.starts.length) {
      const grown = new Float64Array(this.starts.length * 2);
      grown.set(this.starts);
      this.starts = grown;
    }
    this.starts[this.lineCount++] = offset;
  }

  line(i) {
    const from = this.starts[i];
    const end = i + 1 < this.lineCount ? this.starts[i + 1] - 1 : this.size;
    const text = this.decoder.decode(this.bytes(from, Math.min(end, from + MAX_RENDERED_CHARS)));
    return text.endsWith("\r") ? text.slice(0, -1) : text;
  }

  bytes(from, to) {
    let c = this.chunkAt(from);
    const out = new Uint8Array(to - from);
    for (let filled = 0; filled < out.length; c++) {
      const chunk = this.chunks[c];
      const start = from + filled - this.chunkStarts[c];
      const piece = chunk.subarray(start, Math.min(chunk.length, start + out.length - filled));
      out.set(piece, filled);
      filled += piece.length;
    }
    return out;
  }

  chunkAt(offset) {
    let lo = 0;
    let hi = this.chunks.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.chunkStarts[mid] <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }
}

const BATCH_BYTES = 1 << 20;

// Streams a Response body into a StoredLog, calling onProgress as it grows. Reads can be a few
// hundred bytes each; they are gathered into 1 MiB chunks so a big log stays a few chunks.
export async function readInto(response, log, onProgress) {
  const reader = response.body.getReader();
  let pending = [];
  let pendingBytes = 0;
  const flush = () => {
    if (!pendingBytes) return;
    const chunk = new Uint8Array(pendingBytes);
    pending.reduce((at, piece) => (chunk.set(piece, at), at + piece.length), 0);
    log.append(chunk);
    pending = [];
    pendingBytes = 0;
    onProgress(log);
  };
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return flush();
    pending.push(value);
    pendingBytes += value.length;
    if (pendingBytes >= BATCH_BYTES) flush();
  }
}

const EMPTY = { length: 0, firstNumber: 1, line: () => "" };

// A scrolling window onto a log source ({length, firstNumber, line(i)}). Sticks to the bottom
// while the reader is there, so a live log follows new lines until they scroll up.
export class LogView {
  constructor(label) {
    this.source = EMPTY;
    this.empty = ""; // what an empty log says
    this.follow = true;
    this.frame = 0;
    this.element = document.createElement("div");
    this.element.className = "log-scroll";
    this.element.tabIndex = 0;
    this.element.setAttribute("role", "region");
    this.element.setAttribute("aria-label", label);
    this.spacer = document.createElement("div");
    this.spacer.className = "log-spacer";
    this.rows = document.createElement("div");
    this.rows.className = "log-rows";
    this.element.append(this.spacer, this.rows);
    this.element.addEventListener("scroll", () => this.scrolled(), { passive: true });
    new ResizeObserver(() => this.refresh()).observe(this.element);
  }

  show(source) {
    this.source = source;
    this.follow = true;
    this.refresh();
  }

  setEmptyText(text) {
    if (text === this.empty) return;
    this.empty = text;
    this.refresh();
  }

  scrolled() {
    const el = this.element;
    this.follow = el.scrollTop + el.clientHeight >= el.scrollHeight - ROW_PX;
    this.refresh();
  }

  refresh() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  render() {
    this.frame = 0;
    const el = this.element;
    const count = this.source.length;
    const fullPx = count * ROW_PX;
    const spacerPx = Math.min(fullPx, MAX_SCROLL_PX);
    this.spacer.style.height = `${spacerPx}px`;
    // As tall as the log (CSS max-height caps it), with a row spare for a horizontal scrollbar.
    el.style.height = `${spacerPx + 2 * ROW_PX}px`;
    if (this.follow) el.scrollTop = spacerPx;
    const view = el.clientHeight;
    // Past MAX_SCROLL_PX a scrolled pixel stands for more than a pixel of log.
    const scale = spacerPx > view ? (fullPx - view) / (spacerPx - view) : 1;
    const top = el.scrollTop * scale;
    const first = Math.floor(top / ROW_PX);
    const offset = top - first * ROW_PX;
    // Rows never reach past the spacer: that would grow the scroll height under the reader.
    const fits = Math.floor((spacerPx - el.scrollTop + offset) / ROW_PX);
    const last = Math.min(count, first + Math.ceil((view + offset) / ROW_PX), first + fits);
    this.rows.style.transform = `translateY(${el.scrollTop - offset}px)`;
    this.rows.style.setProperty("--digits", String(this.source.firstNumber + count).length);
    const rows = [];
    for (let i = first; i < last; i++) rows.push(this.row(i));
    if (!count)
      rows.push(
        Object.assign(document.createElement("div"), { className: "log-empty", textContent: this.empty }),
      );
    this.rows.replaceChildren(...rows);
  }

  row(i) {
    const row = document.createElement("div");
    row.className = "log-row";
    const number = document.createElement("span");
    number.className = "log-n";
    number.textContent = String(this.source.firstNumber + i);
    const text = this.source.line(i);
    row.append(
      number,
      render(text.length > MAX_RENDERED_CHARS ? `${text.slice(0, MAX_RENDERED_CHARS)}…` : text),
    );
    return row;
  }
}
