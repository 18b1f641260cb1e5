"""Progress for long runs: a bar on a terminal, plain lines (every 10 %) otherwise."""

from __future__ import annotations

from typing import TextIO


class Progress:
    WIDTH = 30

    def __init__(self, total: int, stream: TextIO, label: str = "replayed") -> None:
        self.total, self.stream, self.label = total, stream, label
        self.done = 0
        self.tty = stream.isatty()
        self._next_line = 0.1

    def advance(self, n: int) -> None:
        self.done += n
        share = min(1.0, self.done / self.total) if self.total else 1.0
        if self.tty:
            filled = int(share * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            self.stream.write(f"\r[{bar}] {self.done:,}/{self.total:,} {share:4.0%}")
        elif share >= self._next_line:
            self.stream.write(f"{self.label} {self.done:,}/{self.total:,} ({share:.0%})\n")
            while self._next_line <= share:
                self._next_line += 0.1
        self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
