"""The `/1.0/events` stream: lifecycle and operation events as they happen."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import msgspec

from coi_async.errors import IncusError
from coi_async.incus.base import ApiBase
from coi_async.incus.models import Event

_EVENT = msgspec.json.Decoder(Event)


class EventsApi(ApiBase):
    @asynccontextmanager
    async def events(
        self, types: Sequence[str] = ("lifecycle",), *, all_projects: bool = False
    ) -> AsyncIterator[AsyncIterator[Event]]:
        """Subscribe, then iterate. Events that happen after entering are all seen, in order.

        incusd disconnects a listener that falls behind rather than skip events: the iterator
        then ends with an IncusError, and whoever tracks state should re-list and subscribe again.
        """
        params = {"type": ",".join(types)}
        if all_projects:
            params["all-projects"] = "true"
        async with self._transport.websocket(
            "/1.0/events", params=self._params(params), answer_pings=True
        ) as ws:

            async def stream() -> AsyncIterator[Event]:
                while True:
                    frame = await ws.receive()
                    if frame is None:
                        raise IncusError("the event stream from incusd was closed")
                    if not frame:
                        continue
                    try:
                        yield _EVENT.decode(frame)
                    except msgspec.DecodeError as exc:
                        raise IncusError(f"unexpected event from incusd: {exc}") from exc

            yield stream()
