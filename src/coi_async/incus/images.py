"""Images: list, look up by alias or fingerprint, aliases, delete, publish, import."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from coi_async.errors import IncusError, NotFoundError
from coi_async.incus.base import ApiBase
from coi_async.incus.models import (
    AsyncResponse,
    Image,
    ImageAliasEntry,
    ImageAliasesPost,
    ImagePublishSource,
    ImagesPost,
    Operation,
)
from coi_async.incus.paths import image_alias_path, image_path


def _fingerprint(op: Operation | None, *, what: str) -> str:
    fingerprint = (op.metadata or {}).get("fingerprint") if op is not None else None
    if not isinstance(fingerprint, str) or not fingerprint:
        raise IncusError(f"{what} finished without a fingerprint")
    return fingerprint


class ImagesApi(ApiBase):
    async def list_images(self, *, filter_expr: str | None = None) -> list[Image]:
        params = {"recursion": "1"}
        if filter_expr:
            params["filter"] = filter_expr
        return await self._get("/1.0/images", list[Image], params=params, what="image list")

    async def get_image(self, fingerprint: str) -> Image:
        """An image by (a unique prefix of) its fingerprint."""
        return await self._get(image_path(fingerprint), Image, what="image")

    async def get_image_alias(self, alias: str) -> ImageAliasEntry:
        return await self._get(image_alias_path(alias), ImageAliasEntry, what="image alias")

    async def find_image(self, alias_or_fingerprint: str) -> Image | None:
        """The image an alias points to, else the image with that fingerprint, else None."""
        try:
            entry = await self.get_image_alias(alias_or_fingerprint)
        except NotFoundError:
            try:
                return await self.get_image(alias_or_fingerprint)
            except NotFoundError:
                return None
        return await self.get_image(entry.target)

    async def create_image_alias(self, alias: str, fingerprint: str, *, description: str = "") -> None:
        await self._call(
            "POST",
            "/1.0/images/aliases",
            body=ImageAliasesPost(name=alias, target=fingerprint, description=description),
        )

    async def point_image_alias(self, alias: str, fingerprint: str, *, description: str = "") -> None:
        """Make `alias` name this image, creating it or moving it from another image."""
        try:
            await self.delete_image_alias(alias)
        except NotFoundError:
            pass
        await self.create_image_alias(alias, fingerprint, description=description)

    async def delete_image_alias(self, alias: str) -> None:
        await self._call("DELETE", image_alias_path(alias))

    async def delete_image(self, fingerprint: str) -> None:
        await self._run("DELETE", image_path(fingerprint))

    async def publish_image(
        self,
        instance: str,
        *,
        aliases: list[str] | None = None,
        properties: dict[str, str] | None = None,
        compression: str = "none",
    ) -> str:
        """Publish a (stopped) instance as an image; return its fingerprint.

        Uncompressed by default: gzip costs seconds on every publish and on every create.
        """
        request = ImagesPost(
            source=ImagePublishSource(name=instance),
            aliases=[ImageAliasesPost(name=a, target="") for a in aliases or []],
            properties=properties or {},
            compression_algorithm=compression,
        )
        op = await self._run("POST", "/1.0/images", body=request)
        return _fingerprint(op, what="publish")

    async def import_image(
        self,
        tarball: Path,
        *,
        aliases: list[str] | None = None,
        properties: dict[str, str] | None = None,
    ) -> str:
        """Import a unified image tarball (metadata.yaml + rootfs/), streamed from disk."""
        headers = {"Content-Type": "application/octet-stream", "X-Incus-filename": tarball.name}
        if properties:
            headers["X-Incus-properties"] = urlencode(properties)
        with open(tarball, "rb") as fh:  # noqa: ASYNC230 - aiohttp reads it in a worker thread
            envelope = await self._transport.request(
                "POST", "/1.0/images", params=self._params(), data=fh, headers=headers
            )
        op = await self.wait_operation(envelope.operation) if isinstance(envelope, AsyncResponse) else None
        fingerprint = _fingerprint(op, what="image import")
        for alias in aliases or []:
            await self.point_image_alias(alias, fingerprint)
        return fingerprint
