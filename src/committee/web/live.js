// One WebSocket per page. Each subscription remembers the last seq it saw, so a dropped
// connection (or the server's 4408 "too slow") resumes exactly where it stopped.

import { signIn, wsUrl } from "./api.js";

const CLOSE_UNAUTHORIZED = 4401;
const CLOSE_TOO_SLOW = 4408;
const PING_MS = 20_000;
const MAX_BACKOFF_MS = 5_000;

export class Live {
  constructor(onState = () => {}) {
    this.subs = new Map();
    this.socket = null;
    this.backoff = 250;
    this.onState = onState;
    this.pinger = 0;
    this.retry = 0;
  }

  // Calls onEvent(event) for every run event of runId after afterSeq, live, in order, once.
  subscribe(runId, { onEvent, onError = () => {}, afterSeq = 0 }) {
    const sub = { runId, lastSeq: afterSeq, onEvent, onError };
    this.subs.set(runId, sub);
    if (this.socket?.readyState === WebSocket.OPEN) this.sendSubscribe(sub);
    else this.connect();
    return () => {
      if (this.subs.get(runId) !== sub) return;
      this.subs.delete(runId);
      // The protocol has no unsubscribe: a fresh connection carries only what is still wanted.
      this.restart();
    };
  }

  restart() {
    this.drop();
    if (this.subs.size) this.connect();
    else this.onState("idle");
  }

  connect() {
    if (this.socket) return;
    clearTimeout(this.retry);
    const socket = new WebSocket(wsUrl());
    this.socket = socket;
    this.onState("connecting");
    socket.onopen = () => {
      this.backoff = 250;
      this.onState("live");
      for (const sub of this.subs.values()) this.sendSubscribe(sub);
      this.pinger = setInterval(() => this.send({ type: "ping" }), PING_MS);
    };
    socket.onmessage = (message) => this.receive(JSON.parse(message.data));
    socket.onclose = (close) => this.closed(socket, close.code);
  }

  drop() {
    const socket = this.socket;
    this.socket = null;
    clearInterval(this.pinger);
    clearTimeout(this.retry);
    if (!socket) return;
    socket.onclose = socket.onmessage = socket.onopen = null;
    socket.close(1000);
  }

  async closed(socket, code) {
    if (socket !== this.socket) return;
    this.drop();
    if (!this.subs.size) return;
    if (code === CLOSE_UNAUTHORIZED) {
      this.onState("signed-out");
      await signIn("The live connection needs a valid token.");
      this.connect();
      return;
    }
    this.onState("reconnecting");
    // Too slow: the server already dropped us on purpose, so come straight back.
    const delay = code === CLOSE_TOO_SLOW ? 0 : this.backoff;
    this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
    this.retry = setTimeout(() => this.connect(), delay);
  }

  send(message) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  sendSubscribe(sub) {
    this.send({ type: "subscribe", run_id: sub.runId, after_seq: sub.lastSeq });
  }

  receive(message) {
    const sub = this.subs.get(message.run_id);
    if (!sub) return;
    if (message.type === "error") sub.onError(message);
    if (typeof message.seq !== "number" || message.seq <= sub.lastSeq) return;
    if (message.seq !== sub.lastSeq + 1) {
      // Never expected (seq has no gaps); resubscribing from what we have repairs it.
      this.restart();
      return;
    }
    sub.lastSeq = message.seq;
    sub.onEvent(message);
  }
}
