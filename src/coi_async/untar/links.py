"""Where symbolic links lead, worked out on the archive's own names, never on the disk. Pure.

A link is kept only if its target, with every component resolved through the archive's own links
(the whole set, as it will be once all are made), stays inside the destination. Resolution works
on physical paths as the kernel does: `..` after a link goes up from where the link led. An
absolute target, a climb above the root, a loop or more than 40 nested links (the kernel's
limit) means the link is left out. No host path is ever looked at, so no PATH_MAX trick applies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from coi_async.errors import ArchiveError

Parts = tuple[str, ...]

# The kernel's own limit on nested links in one lookup (ELOOP).
MAX_NESTED_LINKS = 40
# Components looked at over all links of one archive; a real tree needs a few per link.
_MAX_STEPS = 4_000_000


class LinkChecker:
    """Decides, for links at `links` (path -> target), which stay inside the root."""

    def __init__(self, links: Mapping[Parts, str], *, stopped: Callable[[], None]) -> None:
        self._links = links
        self._stopped = stopped
        self._steps = 0

    def stays_inside(self, path: Parts) -> bool:
        """Whether the link at `path` leads (through any chain of links) to a place inside."""
        return self._resolve(list(path[:-1]), self._links[path], 0) is not None

    def _tick(self) -> None:
        self._steps += 1
        if self._steps > _MAX_STEPS:
            raise ArchiveError("too many symbolic links to check")
        if self._steps % 65536 == 0:
            self._stopped()

    def _resolve(self, start: list[str], target: str, nested: int) -> list[str] | None:
        """The physical path `target` leads to from the directory `start`; None if it leaves."""
        if not target or target.startswith("/") or "\0" in target:
            return None
        where = list(start)
        for part in target.split("/"):
            self._tick()
            if part in ("", "."):
                continue
            if part == "..":
                if not where:
                    return None
                where.pop()
                continue
            where.append(part)
            link = self._links.get(tuple(where))
            if link is not None:
                if nested >= MAX_NESTED_LINKS:
                    return None
                resolved = self._resolve(where[:-1], link, nested + 1)
                if resolved is None:
                    return None
                where = resolved
        return where
