"""`Retry`: what a loop that keeps trying something against incusd (a connection, an advert)
remembers between attempts: the growing pause, and the failure it last told of."""

from __future__ import annotations


class Retry:
    """Pauses from `first_s`, doubling up to `most_s`, back to `first_s` once an attempt went
    well; and whether a failure is news, so that one that stays the same is told once."""

    def __init__(self, first_s: float, most_s: float) -> None:
        self.first_s = first_s
        self.most_s = most_s
        self.pause = first_s
        self.told = ""

    def succeeded(self) -> None:
        self.pause = self.first_s
        self.told = ""

    def tell(self, reason: str) -> bool:
        """Whether a failure for `reason` is news: the first since a success, or another reason."""
        news = reason != self.told
        self.told = reason
        return news

    def next_pause(self) -> float:
        pause = self.pause
        self.pause = min(pause * 2, self.most_s)
        return pause
