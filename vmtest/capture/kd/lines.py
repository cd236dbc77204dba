"""DbgPrint text cut into lines: one print may hold several lines or part of one (§4.2)."""

from __future__ import annotations

import codecs

__all__ = ["LineAssembler", "TimedLine"]

TimedLine = tuple[float, str]
"""A line without its newline, with the time its first byte arrived."""


class LineAssembler:
    """Buffers the partial line across prints; bounded by ``max_chars`` (a longer line is cut)."""

    def __init__(self, encoding: str, max_chars: int) -> None:
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._max_chars = max_chars
        self._partial = ""
        self._since: float | None = None

    @property
    def partial_since(self) -> float | None:
        """When the buffered partial line began, or ``None`` when nothing is buffered."""
        return self._since

    def feed(self, data: bytes, now: float) -> list[TimedLine]:
        """Add the bytes of one print; return the lines it completed."""
        text = self._decoder.decode(data)
        if not text:
            return []
        if self._since is None:
            self._since = now
        *complete, rest = text.split("\n")
        lines: list[TimedLine] = []
        for piece in complete:
            lines.append((self._since, _without_cr(self._partial + piece)))
            self._partial, self._since = "", now
        self._partial += rest
        while len(self._partial) > self._max_chars:
            lines.append((self._since, self._partial[: self._max_chars]))
            self._partial = self._partial[self._max_chars :]
        if not self._partial:
            self._since = None
        return lines

    def flush(self) -> TimedLine | None:
        """The partial line, if any, emitted now (the stream went idle or is closing)."""
        text = self._partial + self._decoder.decode(b"", final=True)
        since = self._since
        self._partial, self._since = "", None
        return None if since is None or not text else (since, _without_cr(text))


def _without_cr(line: str) -> str:
    return line[:-1] if line.endswith("\r") else line
