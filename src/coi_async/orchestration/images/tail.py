"""What a build keeps of its recipe's output: the last lines, for its error messages."""

from __future__ import annotations


class OutputTail:
    """The last lines of a byte stream, for error messages."""

    def __init__(self, lines: int) -> None:
        self._lines = lines
        self._buffer = bytearray()

    def add(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > 64 * 1024:
            del self._buffer[: -32 * 1024]

    def text(self) -> str:
        # A progress line redrawn with \r shows as what the terminal would show: its last state.
        text = bytes(self._buffer).decode(errors="replace")
        lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
        lines = [line for line in lines if line.strip()]
        return "\n".join(lines[-self._lines :])
