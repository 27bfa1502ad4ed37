"""Turning a process's raw output bytes into lines: pure, shared by every executor.

Invalid UTF-8 is replaced, not fatal; a `\\r` progress bar keeps what a terminal would show
(the last segment); a line with no newline in sight is cut at `max_line` bytes so binary output
cannot grow a buffer without bound.
"""

from __future__ import annotations

from collections import deque

MAX_LINE_BYTES = 64 * 1024


def _decode(raw: bytes) -> str:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if b"\r" in raw:
        segments = [s for s in raw.split(b"\r") if s]
        raw = segments[-1] if segments else b""
    return raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")


class LineSplitter:
    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._max_line = max_line

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        end = self._buffer.rfind(b"\n")
        lines: list[str] = []
        if end >= 0:
            complete = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            lines = [_decode(raw) for raw in complete.split(b"\n")]
        while len(self._buffer) >= self._max_line:
            lines.append(_decode(bytes(self._buffer[: self._max_line])))
            del self._buffer[: self._max_line]
        return lines

    def flush(self) -> list[str]:
        """The unterminated last line, if any."""
        if not self._buffer:
            return []
        rest = _decode(bytes(self._buffer))
        self._buffer.clear()
        return [rest]


class Tail:
    """The last `size` lines seen, for parsing a test runner's closing summary."""

    def __init__(self, size: int = 200) -> None:
        self._lines: deque[str] = deque(maxlen=size)

    def extend(self, lines: list[str]) -> None:
        self._lines.extend(lines)

    def text(self) -> str:
        return "\n".join(self._lines)
