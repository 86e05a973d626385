#!/usr/bin/env python3
"""Provoke, on the real incusd, every error condition coi tells apart, and record what it sends.

A developer tool, not run in CI: `.venv/bin/python tests/data/capture_incus_errors.py` (needs
incusd and the coi-test-busybox image). It works in a throwaway project `coi-errcap-<hex>` that it
creates and deletes, touches nothing else, and writes tests/data/incus_errors.json, which
tests/unit/test_classify.py feeds to `coi_async.incus.classify.classify`.

Each record: the request (method, path without `project=`), and either the refusal (HTTP status
and error envelope) or, for a background operation, how it ended (`status_code`, `err`) together
with what its `/wait` long poll answered. The project's random name is replaced by `<project>`
where a message embeds it; everything else is verbatim. `expect` is the error class coi must
make of it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "src"))

from coi_async.incus import resolve_socket

IMAGE = "coi-test-busybox"
OUT = HERE / "incus_errors.json"
EXEC_TRUE = {"command": ["true"], "wait-for-websocket": True, "interactive": False}


# The outcomes a race can have, for records whose class depends on which one happened.
_RACE_OUTCOMES = (
    ("is busy running", "InstanceBusyError"),
    ("already stopped", "AlreadyStoppedError"),
    ("is not running", "InstanceNotRunningError"),
    ("already running", "AlreadyRunningError"),
    ("Instance not found", "InstanceNotFoundError"),
    ("Instance is running", "InstanceRunningError"),
    ("UNIQUE constraint", "ConflictError"),
)


class Capture:
    def __init__(self, session: aiohttp.ClientSession, project: str) -> None:
        self.session = session
        self.project = project
        self.records: list[dict[str, Any]] = []

    def scrub(self, text: str) -> str:
        return text.replace(self.project, "<project>")

    async def raw(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        params: dict[str, str] | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """One request: `body` sent as JSON, or `data` as it is with `headers`."""
        query = {"project": self.project, **(params or {})}
        if body is not None:
            data = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        async with self.session.request(method, path, params=query, data=data, headers=headers or {}) as resp:
            return resp.status, await resp.read()

    async def wait(self, op_path: str, poll_s: int = 120) -> tuple[int, dict[str, Any], dict[str, Any]]:
        """(HTTP status, envelope) of the /wait long poll, and the operation as GET then shows it."""
        path = op_path.split("?", 1)[0]
        status, raw = await self.raw("GET", f"{path}/wait", params={"timeout": str(poll_s)})
        envelope = json.loads(raw) if raw.strip() else {}
        op: dict[str, Any] = envelope.get("metadata") or {}
        if not op or "status_code" not in op:
            op_status, op_raw = await self.raw("GET", path)
            op = (json.loads(op_raw).get("metadata") or {}) if op_status == 200 else {}
        return status, envelope, op

    def record(self, case: str, method: str, path: str, expect: str, **found: Any) -> None:
        if expect == "by-text":  # a race: which of its outcomes happened decides the class
            text = str(found.get("error") or found.get("err") or "")
            expect = next((cls for marker, cls in _RACE_OUTCOMES if marker in text), "IncusApiError")
        entry = {"case": case, "request": {"method": method, "path": path}, "expect": expect, **found}
        for key in ("error", "err"):
            if isinstance(entry.get(key), str):
                entry[key] = self.scrub(entry[key])
        if isinstance(entry.get("wait"), dict) and isinstance(entry["wait"].get("error"), str):
            entry["wait"]["error"] = self.scrub(entry["wait"]["error"])
        self.records.append(entry)
        shown = entry.get("error") or entry.get("err")
        print(f"{case:45} {entry.get('status') or entry.get('status_code')}: {shown}", file=sys.stderr)

    async def provoke(
        self,
        case: str,
        method: str,
        path: str,
        expect: str,
        *,
        params: dict[str, str] | None = None,
        **send: Any,
    ) -> None:
        """Send one request (`send`: the rest of `raw`'s arguments); record its refusal, or the
        failure of the operation it started."""
        status, raw = await self.raw(method, path, params=params, **send)
        shown_path = path + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")
        if not raw.strip():
            self.record(case, method, shown_path, expect, kind="refused", status=status, error="")
            return
        envelope = json.loads(raw)
        if envelope.get("type") == "error":
            self.record(case, method, shown_path, expect, **refusal(status, envelope))
            return
        if envelope.get("type") == "async":
            wait_status, wait_env, op = await self.wait(envelope["operation"])
            if op.get("status_code", 0) < 400:
                print(f"{case:45} succeeded (not recorded)", file=sys.stderr)
                return
            self.record(
                case,
                method,
                shown_path,
                expect,
                **failure(op),
                wait={
                    "status": wait_status,
                    "type": wait_env.get("type"),
                    "error_code": wait_env.get("error_code"),
                    "error": wait_env.get("error", ""),
                },
            )
            return
        print(f"{case:45} succeeded (not recorded)", file=sys.stderr)

    async def change_state(
        self, case: str, instance: str, expect: str, action: str, **options: object
    ) -> None:
        """`provoke` a state change (`action` with `options`) of the instance at path `instance`."""
        await self.provoke(case, "PUT", f"{instance}/state", expect, body={"action": action, **options})

    async def provoke_create(self, case: str, expect: str, name: str, **create_args: Any) -> None:
        """`provoke` the creation of the instance `name` (`create`'s arguments)."""
        await self.provoke(case, "POST", "/1.0/instances", expect, body=create(name, **create_args))

    async def ensure(self, method: str, path: str, *, body: object = None) -> None:
        """A setup step that must work."""
        _, raw = await self.raw(method, path, body=body)
        envelope = json.loads(raw)
        if envelope.get("type") == "error":
            raise SystemExit(f"setup {method} {path} failed: {envelope['error']}")
        if envelope.get("type") == "async":
            _, _, op = await self.wait(envelope["operation"])
            if op.get("status_code", 0) >= 400:
                raise SystemExit(f"setup {method} {path} failed: {op.get('err')}")


def refusal(status: int, envelope: dict[str, Any]) -> dict[str, Any]:
    """What a record says of a request incusd refused with the error `envelope` (HTTP `status`)."""
    return {
        "kind": "refused",
        "status": status,
        "error": envelope.get("error", ""),
        "error_code": envelope.get("error_code"),
    }


def failure(op: dict[str, Any]) -> dict[str, Any]:
    """What a record says of a background operation `op` (as GET shows it) that failed."""
    return {"kind": "operation", "status_code": op.get("status_code"), "err": op.get("err", "")}


def create(name: str, *, start: bool, config: dict[str, str] | None = None, devices: Any = None) -> Any:
    body: dict[str, Any] = {
        "name": name,
        "source": {"type": "image", "alias": IMAGE},
        "start": start,
        "config": config or {},
    }
    if devices:
        body["devices"] = devices
    return body


async def capture(cap: Capture) -> None:
    missing = "/1.0/instances/errcap-missing"
    await cap.provoke("get missing instance", "GET", missing, "InstanceNotFoundError")
    await cap.provoke("state of missing instance", "GET", f"{missing}/state", "InstanceNotFoundError")
    await cap.change_state("stop missing instance", missing, "InstanceNotFoundError", "stop")
    await cap.change_state("start missing instance", missing, "InstanceNotFoundError", "start")
    await cap.provoke("delete missing instance", "DELETE", missing, "InstanceNotFoundError")
    await cap.provoke(
        "patch missing instance", "PATCH", missing, "InstanceNotFoundError", body={"config": {"user.x": "1"}}
    )
    await cap.provoke(
        "exec in missing instance",
        "POST",
        f"{missing}/exec",
        "InstanceNotFoundError",
        body=EXEC_TRUE,
    )
    for method in ("GET", "HEAD", "DELETE"):
        await cap.provoke(
            f"files {method} in missing instance",
            method,
            f"{missing}/files",
            "InstanceNotFoundError" if method != "HEAD" else "NotFoundError",
            params={"path": "/etc/hostname"},
        )
    await cap.provoke(
        "files POST in missing instance",
        "POST",
        f"{missing}/files",
        "InstanceNotFoundError",
        params={"path": "/tmp/x"},
    )
    await cap.provoke(
        "long poll on a missing operation",
        "GET",
        "/1.0/operations/00000000-0000-0000-0000-000000000000/wait",
        "NotFoundError",
        params={"timeout": "1"},
    )
    await cap.provoke("image alias missing", "GET", "/1.0/images/aliases/errcap-no-image", "NotFoundError")
    await cap.provoke(
        "create from missing image",
        "POST",
        "/1.0/instances",
        "OperationFailedError",
        body={"name": "errcap-noimage", "source": {"type": "image", "alias": "errcap-no-image"}},
    )
    case = "list instances of missing project"
    status, raw = await cap.raw("GET", "/1.0/instances", params={"project": "coi-errcap-no-such"})
    envelope = json.loads(raw)
    if envelope.get("type") == "error":
        cap.record(case, "GET", "/1.0/instances", "NotFoundError", **refusal(status, envelope))
    else:  # incusd 6.0 lists an unknown project as empty
        print(f"{case}: {status} {envelope.get('metadata')}", file=sys.stderr)

    # A running and a stopped container.
    await cap.ensure("POST", "/1.0/instances", body=create("errcap-run", start=True))
    await cap.ensure("POST", "/1.0/instances", body=create("errcap-stopped", start=False))
    run, stopped = "/1.0/instances/errcap-run", "/1.0/instances/errcap-stopped"

    await cap.change_state("start running instance", run, "AlreadyRunningError", "start")
    await cap.change_state(
        "graceful stop of stopped instance", stopped, "AlreadyStoppedError", "stop", timeout=5
    )
    await cap.change_state(
        "forced stop of stopped instance", stopped, "AlreadyStoppedError", "stop", force=True
    )
    await cap.change_state(
        "restart of stopped instance", stopped, "AlreadyStoppedError", "restart", force=True
    )
    await cap.provoke("delete running instance", "DELETE", run, "InstanceRunningError")
    await cap.provoke(
        "exec in stopped instance",
        "POST",
        f"{stopped}/exec",
        "InstanceNotRunningError",
        body=EXEC_TRUE,
    )
    await cap.provoke_create("create with taken name", "ConflictError", "errcap-run", start=False)

    # Files API on missing paths (running and stopped).
    for where, inst in (("running", run), ("stopped", stopped)):
        for method in ("GET", "HEAD", "DELETE"):
            await cap.provoke(
                f"files {method} missing path ({where})",
                method,
                f"{inst}/files",
                "NotFoundError",
                params={"path": "/errcap/no/such"},
            )
        await cap.provoke(
            f"files POST into missing directory ({where})",
            "POST",
            f"{inst}/files",
            "NotFoundError",
            params={"path": "/errcap/no/such/file"},
        )
        # make_directory of a directory that exists (archive.py suppresses ConflictError).
        await cap.provoke(
            f"files POST directory that exists ({where})",
            "POST",
            f"{inst}/files",
            "ConflictError",
            params={"path": "/tmp"},
            data=b"",
            headers={"X-Incus-type": "directory", "X-Incus-mode": "0755", "X-Incus-write": "overwrite"},
        )

    # Disk devices: a missing source, and (maybe) a shift the host cannot do.
    for where, inst in (("running", run), ("stopped", stopped)):
        await cap.provoke(
            f"disk device with missing source ({where})",
            "PATCH",
            inst,
            "SourcePathMissingError",
            body={"devices": {"data": {"type": "disk", "source": "/errcap/no/such", "path": "/mnt/x"}}},
        )
    with tempfile.TemporaryDirectory(prefix="coi-errcap-") as shared:
        await cap.provoke(
            "disk device with shift (running)",
            "PATCH",
            run,
            "IdmapUnsupportedError",
            body={"devices": {"sh": {"type": "disk", "source": shared, "path": "/mnt/sh", "shift": "true"}}},
        )
    # A raw.idmap the host cannot grant fails the start with a bare forkstart error that does not
    # mention ids at all: nothing in the text tells it from any other failed start.
    idmaps = (
        (
            "create with raw.idmap outside the allowed range",
            "OperationFailedError",
            {"raw.idmap": "both 4000000000 1000"},
        ),
        (
            "create with security.idmap.size too small",
            "IdmapUnsupportedError",
            {"security.idmap.isolated": "true", "security.idmap.size": "4294967295"},
        ),
        (
            "create with raw.idmap of a host uid not in /etc/subuid",
            "OperationFailedError",
            {"raw.idmap": "both 2000 1000"},
        ),
        ("create with a malformed raw.idmap", "OperationFailedError", {"raw.idmap": "both x 1000"}),
    )
    for i, (case, expect, config) in enumerate(idmaps, 1):
        await cap.provoke_create(case, expect, f"errcap-map{i}", start=True, config=config)
    for i, source in enumerate(("/sys/kernel/mm", "/proc/sys/kernel")):
        await cap.provoke(
            f"disk device with shift on {source} (running)",
            "PATCH",
            run,
            "IdmapUnsupportedError",
            body={
                "devices": {
                    f"sh{i}": {"type": "disk", "source": source, "path": f"/mnt/sh{i}", "shift": "true"}
                }
            },
        )

    # State changes while another operation holds the instance.
    for attempt in range(4):
        await cap.ensure("POST", "/1.0/instances", body=create(f"errcap-busy{attempt}", start=False))
        busy = f"/1.0/instances/errcap-busy{attempt}"
        status, raw = await cap.raw("PUT", f"{busy}/state", body={"action": "start"})
        start_op = json.loads(raw)["operation"]
        await cap.change_state(
            f"forced stop while a start runs ({attempt})", busy, "by-text", "stop", force=True
        )
        await cap.provoke(f"delete while a start runs ({attempt})", "DELETE", busy, "by-text")
        await cap.wait(start_op)
        if any("busy" in (r.get("error") or r.get("err") or "") for r in cap.records[-2:]):
            break
    for attempt in range(4):
        name = f"errcap-cb{attempt}"
        status, raw = await cap.raw("POST", "/1.0/instances", body=create(name, start=True))
        create_op = json.loads(raw)["operation"]
        await asyncio.sleep(0.05 * attempt)
        await cap.change_state(
            f"start while a create runs ({attempt})", f"/1.0/instances/{name}", "by-text", "start"
        )
        await cap.wait(create_op)
        if "busy" in (cap.records[-1].get("error") or cap.records[-1].get("err") or ""):
            break

    # A graceful stop whose timeout passes: PID 1 ignores SIGPWR.
    await cap.ensure(
        "POST",
        "/1.0/instances",
        body=create("errcap-stubborn", start=True, config={"environment.COI_IGNORE_STOP": "1"}),
    )
    stubborn = "/1.0/instances/errcap-stubborn"
    await cap.change_state(
        "graceful stop whose timeout passes", stubborn, "StopTimedOutError", "stop", timeout=1
    )

    # A long poll whose timeout passes on a still-running operation, and a state change while
    # another operation holds the instance.
    status, raw = await cap.raw("PUT", f"{stubborn}/state", body={"action": "stop", "timeout": 8})
    op = json.loads(raw)["operation"].split("?", 1)[0]
    await asyncio.sleep(0.3)
    await cap.provoke(
        "long poll whose timeout passes",
        "GET",
        f"{op}/wait",
        "OperationTimedOutError",
        params={"timeout": "1"},
    )
    cap.records[-1]["request"]["path"] = "/1.0/operations/<id>/wait?timeout=1"
    await cap.change_state("forced stop while a stop runs", stubborn, "by-text", "stop", force=True)
    await cap.change_state("start while a stop runs", stubborn, "by-text", "start")
    await cap.provoke("delete while a stop runs", "DELETE", stubborn, "InstanceRunningError")
    await cap.wait(op, poll_s=30)

    # Two creates of one name at once; the loser may see the name busy, or taken.
    for attempt in range(5):
        name = f"errcap-race{attempt}"
        body = create(name, start=True)
        results = await asyncio.gather(*(cap.raw("POST", "/1.0/instances", body=body) for _ in range(2)))
        case = f"concurrent create of one name ({attempt})"
        texts: list[str] = []
        for status, raw in results:
            envelope = json.loads(raw)
            if envelope.get("type") == "error":
                cap.record(case, "POST", "/1.0/instances", "by-text", **refusal(status, envelope))
                texts.append(envelope["error"])
            else:
                _, _, op_meta = await cap.wait(envelope["operation"])
                if op_meta.get("err"):
                    cap.record(case, "POST", "/1.0/instances", "by-text", **failure(op_meta))
                texts.append(op_meta.get("err", ""))
        if any("busy" in text for text in texts):
            break

    # Two deletes of one stopped instance at once.
    await cap.ensure("POST", "/1.0/instances", body=create("errcap-del", start=False))
    case, path = "concurrent delete", "/1.0/instances/errcap-del"
    results = await asyncio.gather(*(cap.raw("DELETE", path) for _ in range(2)))
    for status, raw in results:
        envelope = json.loads(raw)
        if envelope.get("type") == "error":
            cap.record(case, "DELETE", path, "NotFoundError", **refusal(status, envelope))
        elif envelope.get("type") == "async":
            _, _, op_meta = await cap.wait(envelope["operation"])
            if op_meta.get("err"):
                cap.record(case, "DELETE", path, "OperationFailedError", **failure(op_meta))


async def cleanup(cap: Capture) -> None:
    _, raw = await cap.raw("GET", "/1.0/instances")
    for url in json.loads(raw).get("metadata") or []:
        path = url.split("?", 1)[0]
        for method, target, body in (
            ("PUT", f"{path}/state", {"action": "stop", "force": True}),
            ("DELETE", path, None),
        ):
            _, raw = await cap.raw(method, target, body=body)
            envelope = json.loads(raw)
            if envelope.get("type") == "async":
                await cap.wait(envelope["operation"])
    # Never ?force=true: on incusd 6.0 it also wipes the shared default profile.
    async with cap.session.delete(f"/1.0/projects/{cap.project}") as resp:
        print(f"project {cap.project} deleted: HTTP {resp.status}", file=sys.stderr)


async def main() -> None:
    socket = resolve_socket({}).socket
    project = f"coi-errcap-{secrets.token_hex(4)}"
    connector = aiohttp.UnixConnector(path=str(socket))
    async with aiohttp.ClientSession(connector=connector, base_url="http://incus") as session:
        async with session.post(
            "/1.0/projects",
            json={
                "name": project,
                "description": "coi-async error capture; safe to delete",
                "config": {"features.images": "false", "features.profiles": "false"},
            },
        ) as resp:
            if resp.status >= 400:
                raise SystemExit(f"cannot create project {project}: {await resp.text()}")
        cap = Capture(session, project)
        try:
            await capture(cap)
        finally:
            await cleanup(cap)
    data = {
        "incus": "6.0",
        "note": "captured by tests/data/capture_incus_errors.py; <project> replaces the random project name",
        "records": cap.records,
    }
    OUT.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {len(cap.records)} records to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
