"""Server fan-out benchmark: N WebSocket subscribers on one run that prints lines fast.

    .venv/bin/python bench/bench_server.py [--subscribers N] [--seconds S] [--rate BYTES_PER_S]
        [--line-bytes B] [--interval-ms MS] [--workers W] [--json PATH]

Starts `committee serve --no-auth --executor local` as a subprocess on a free 127.0.0.1 port and
submits one commit whose command prints timestamped lines for S seconds (`--rate` bytes per
second, in a burst every `--interval-ms`). `--workers` client processes hold the N subscribers
between them. Measures, while the command prints:
- fan-out: log bytes and lines delivered to all subscribers per second;
- line-to-client latency p50/p99: when a subscriber got a line minus when the command printed it
  (the line carries its time; one clock). Parsing every frame in every client would take CPU
  from the server on this 2-core machine, so every `--sample-every`-th subscriber parses;
  the others only check that seq numbers arrive contiguous and count bytes;
- the server's peak RSS and CPU time, subscribers dropped as too slow (they resume), seq gaps.
Prints the figures and writes them as JSON (default bench/results/server.json). Targets from the
issue: 1,000 subscribers, >= 50 MB/s fan-out, p99 <= 50 ms.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from committee.messages import CLOSE_TOO_SLOW  # noqa: E402
from repos import make_repo  # noqa: E402

SEQ = re.compile(rb'"seq":(\d+)')
STAMP_BYTES = 18  # "1795664701.123456 "
EMIT_SCRIPT = """\
import sys, time
rate, line_bytes, interval, seconds, warmup = map(float, sys.argv[1:])
time.sleep(warmup)
per_burst = max(1, round(rate * interval / line_bytes))
pad = "x" * int(line_bytes - 19)
end = time.time() + seconds
due = time.time()
while time.time() < end:
    sys.stdout.write(f"{time.time():.6f} {pad}\\n" * per_burst)
    sys.stdout.flush()
    due += interval
    time.sleep(max(0.0, due - time.time()))
"""


# ---------------------------------------------------------------- one subscriber


@dataclass
class Tally:
    """What one worker's subscribers received."""

    log_bytes: int = 0
    log_frames: int = 0
    lines: int = 0
    first: float = float("inf")
    last: float = 0.0
    gaps: int = 0
    drops: int = 0
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (printed at, latency)
    unsampled_seqs: list[int] = field(default_factory=list)
    lines_by_seq: dict[int, int] = field(default_factory=dict)


class Dropped(Exception):
    """The server closed the connection as too slow: resubscribe."""


class Subscriber:
    """One WebSocket subscriber on a plain non-blocking socket. The clients share the server's
    two cores, so they must cost little: frames are parsed by hand (a server's are unmasked and,
    from uvicorn, never fragmented)."""

    def __init__(self, port: int, run_id: str, sampled: bool, tally: Tally) -> None:
        self.port, self.run_id, self.sampled, self.tally = port, run_id, sampled, tally
        self.last_seq = 0
        self.ready = self.done = False
        self.buffer = bytearray()
        self.sock = socket.socket()

    def connect(self) -> socket.socket:
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        head, _, rest = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.buffer = bytearray(rest)
        subscribe = {"type": "subscribe", "run_id": self.run_id, "after_seq": self.last_seq}
        self.send(0x1, json.dumps(subscribe).encode())
        self.sock.setblocking(False)
        return self.sock

    def send(self, opcode: int, payload: bytes) -> None:
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def on_readable(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the socket")
        self.buffer += data
        position = 0
        while not self.done and (frame := self.next_frame(position)) is not None:
            opcode, payload, position = frame
            self.on_frame(opcode, payload)
        del self.buffer[:position]

    def next_frame(self, at: int) -> tuple[int, bytes, int] | None:
        buffer = self.buffer
        if len(buffer) - at < 2:
            return None
        length, start = buffer[at + 1] & 0x7F, at + 2
        if length >= 126:
            size = 2 if length == 126 else 8
            if len(buffer) - at < 2 + size:
                return None
            length, start = int.from_bytes(buffer[start : start + size], "big"), start + size
        if len(buffer) < start + length:
            return None
        return buffer[at] & 0x0F, bytes(buffer[start : start + length]), start + length

    def on_frame(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x9:
            self.send(0xA, payload)
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big")
            if code != CLOSE_TOO_SLOW:
                raise ConnectionError(f"closed with {code}")
            self.tally.drops += 1
            raise Dropped
        elif opcode == 0x1:
            self.ready = True
            self.last_seq = receive(payload, self.last_seq, self.sampled, self.tally)
            self.done = b'"type":"run.finished"' in payload


def receive(raw: bytes, last_seq: int, sampled: bool, tally: Tally) -> int:
    now = time.time()
    # Events put seq near the start, except commit.finished (its result fields come first).
    found = SEQ.search(raw, 0, 120) or SEQ.search(raw)
    if found is None:
        return last_seq
    seq = int(found.group(1))
    if seq <= last_seq:
        return last_seq
    tally.gaps += seq != last_seq + 1
    if b'"type":"commit.log"' not in raw[:200]:
        return seq
    tally.log_bytes += len(raw)
    tally.log_frames += 1
    tally.first, tally.last = min(tally.first, now), max(tally.last, now)
    if sampled:
        lines = json.loads(raw)["lines"]
        tally.lines_by_seq[seq] = len(lines)
        tally.latencies.extend(
            (float(t[:17]), now - float(t[:17])) for t in lines if t[:1].isdigit()
        )
    else:
        tally.unsampled_seqs.append(seq)
    return seq


def worker_main(port: int, run_id: str, count: int, sample_every: int) -> dict[str, Any]:
    """Hold `count` subscribers until the run finishes; what they received."""
    tally = Tally()
    subscribers = [Subscriber(port, run_id, i % sample_every == 0, tally) for i in range(count)]
    selector = selectors.DefaultSelector()
    started = time.time()
    for subscriber in subscribers:
        selector.register(subscriber.connect(), selectors.EVENT_READ, subscriber)
    ready_at, deadline = 0.0, started + 600
    while selector.get_map() and time.time() < deadline:
        for key, _ in selector.select(timeout=1.0):
            serve(selector, key.data)
        if not ready_at and all(s.ready for s in subscribers):
            ready_at = time.time()
    unsampled_lines = sum(tally.lines_by_seq.get(seq, 0) for seq in tally.unsampled_seqs)
    return {
        "connect_s": ready_at - started,
        "ready_at": ready_at,
        "log_bytes": tally.log_bytes,
        "log_frames": tally.log_frames,
        "lines": len(tally.latencies) + unsampled_lines,
        "first": tally.first,
        "last": tally.last,
        "gaps": tally.gaps,
        "drops": tally.drops,
        "unfinished": sum(not s.done for s in subscribers),
        "latencies": tally.latencies,
    }


def serve(selector: selectors.BaseSelector, subscriber: Subscriber) -> None:
    try:
        subscriber.on_readable()
    except Dropped:
        selector.unregister(subscriber.sock)
        subscriber.sock.close()
        selector.register(subscriber.connect(), selectors.EVENT_READ, subscriber)
        return
    if subscriber.done:
        selector.unregister(subscriber.sock)
        subscriber.sock.close()


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    script = "import sys; from committee.cli import main; sys.exit(main())"
    argv = [sys.executable, "-c", script, "serve", "--no-auth", "--executor", "local"]
    argv += ["--port", str(port), "--data-dir", str(data_dir), "--max-concurrent", "1"]
    log = (data_dir / "server.log").open("wb")
    return subprocess.Popen(argv, stdout=log, stderr=log)


def wait_healthy(base: str, server: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if server.poll() is not None:
            raise RuntimeError("the server exited; see its log")
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not come up")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) in KiB, and CPU ticks used, of a live process."""
    figures: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                figures[name] = int(value.split()[0])
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
        figures["cpu_ticks"] = int(fields[11]) + int(fields[12])
    return figures


# ---------------------------------------------------------------- the run


def submit(base: str, repo: Path, args: argparse.Namespace, warmup: float) -> str:
    numbers = [args.rate, args.line_bytes, args.interval_ms / 1000, args.seconds, warmup]
    command = "python3 emit.py " + " ".join(str(n) for n in numbers)
    body = {"repo_url": str(repo), "commits": ["HEAD"], "test_command": command, "no_cache": True}
    created = httpx.post(f"{base}/api/runs", json=body)
    created.raise_for_status()
    run_id: str = created.json()["run_id"]
    return run_id


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    repo, data_dir, port = tmp / "repo", tmp / "data", free_port()
    make_repo(repo, [{"emit.py": EMIT_SCRIPT}])
    data_dir.mkdir()
    base = f"http://127.0.0.1:{port}"
    server = start_server(data_dir, port)
    try:
        wait_healthy(base, server)
        before = proc_status(server.pid)
        warmup = 2.0 + args.subscribers / 250  # time for every subscriber to connect
        run_id = submit(base, repo, args, warmup)
        shares = [
            args.subscribers // args.workers + (i < args.subscribers % args.workers)
            for i in range(args.workers)
        ]
        with ProcessPoolExecutor(args.workers) as pool:
            futures = [
                pool.submit(worker_main, port, run_id, n, args.sample_every) for n in shares if n
            ]
            samples = []  # (time, server status): RSS over the run, CPU in the window
            while not all(f.done() for f in futures):
                samples.append((time.time(), proc_status(server.pid)))
                time.sleep(0.1)
            results = [f.result() for f in futures]
        samples.append((time.time(), proc_status(server.pid)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return summarise(args, results, before, samples)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def summarise(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    before: dict[str, int],
    samples: list[tuple[float, dict[str, int]]],
) -> dict[str, Any]:
    ready_at = max(r["ready_at"] for r in results)
    start, end = min(r["first"] for r in results), max(r["last"] for r in results)
    window = end - start
    latencies = [lat for r in results for printed, lat in r["latencies"] if printed >= ready_at]
    log_bytes = sum(r["log_bytes"] for r in results)
    frames = sum(r["log_frames"] for r in results)
    inside = [(at, status) for at, status in samples if start <= at <= end] or samples[-2:]
    (first_at, first), (last_at, last) = inside[0], inside[-1]
    sampled_s = last_at - first_at
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_s = (last["cpu_ticks"] - first["cpu_ticks"]) / ticks
    after = samples[-1][1]
    return {
        "subscribers": args.subscribers,
        "workers": args.workers,
        "seconds": args.seconds,
        "printed_bytes_per_s": args.rate,
        "line_bytes": args.line_bytes,
        "burst_interval_ms": args.interval_ms,
        "connect_all_s": round(max(r["connect_s"] for r in results), 2),
        "delivery_window_s": round(window, 2),
        "fanout_mb_per_s": round(log_bytes / window / 1e6, 1),
        "lines_per_s_delivered": round(sum(r["lines"] for r in results) / window),
        "frames_per_s_delivered": round(frames / window),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 1),
            "p99": round(percentile(latencies, 0.99) * 1000, 1),
            "max": round(max(latencies, default=float("nan")) * 1000, 1),
            "samples": len(latencies),
        },
        "server_rss_mib": {
            "idle": round(before["VmRSS"] / 1024, 1),
            "peak": round(after["VmHWM"] / 1024, 1),
        },
        "server_cpu_s": round((after["cpu_ticks"] - before["cpu_ticks"]) / ticks, 2),
        # While subscribers receive: the share of one core the server used, and per frame sent.
        "server_cpu_share": round(cpu_s / sampled_s, 2) if sampled_s else None,
        "server_cpu_us_per_frame": round(cpu_s / (frames / window * sampled_s) * 1e6, 1)
        if sampled_s
        else None,
        "dropped_too_slow": sum(r["drops"] for r in results),
        "seq_gaps": sum(r["gaps"] for r in results),
        "unfinished_subscribers": sum(r["unfinished"] for r in results),
        "cores": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the command prints")
    parser.add_argument("--rate", type=int, default=50_000, help="bytes per second printed")
    parser.add_argument("--line-bytes", type=int, default=100)
    parser.add_argument("--interval-ms", type=float, default=20.0, help="one burst of lines per")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--sample-every", type=int, default=10, help="1 in K subscribers parses")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "server.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(args, Path(tmp))
    print(json.dumps(figures, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
