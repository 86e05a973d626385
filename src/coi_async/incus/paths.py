"""URL paths of API objects, with names quoted so that no name can reach another endpoint."""

from __future__ import annotations

from urllib.parse import quote


def _segment(name: str) -> str:
    return quote(name, safe="")


def instance_path(name: str) -> str:
    return f"/1.0/instances/{_segment(name)}"


def image_path(fingerprint: str) -> str:
    return f"/1.0/images/{_segment(fingerprint)}"


def image_alias_path(name: str) -> str:
    return f"/1.0/images/aliases/{_segment(name)}"


def profile_path(name: str) -> str:
    return f"/1.0/profiles/{_segment(name)}"


def project_path(name: str) -> str:
    return f"/1.0/projects/{_segment(name)}"
