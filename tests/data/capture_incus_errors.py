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
        self, method: str, path: str, *, body: object = None, params: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        query = {"project": self.project, **(params or {})}
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with self.session.request(method, path, params=query, data=data, headers=headers) as resp:
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
        body: object = None,
        params: dict[str, str] | None = None,
    ) -> None:
        """Send one request; record its refusal, or the failure of the operation it started."""
        status, raw = await self.raw(method, path, body=body, params=params)
        shown_path = path + ("?" + "&".join(f"{k}={v}" for k, v in params.items()) if params else "")
        if not raw.strip():
            self.record(case, method, shown_path, expect, kind="refused", status=status, error="")
            return
        envelope = json.loads(raw)
        if envelope.get("type") == "error":
            self.record(
                case,
                method,
                shown_path,
                expect,
                kind="refused",
                status=status,
                error=envelope["error"],
                error_code=envelope.get("error_code"),
            )
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
                kind="operation",
                status_code=op.get("status_code"),
                err=op.get("err", ""),
                wait={
                    "status": wait_status,
                    "type": wait_env.get("type"),
                    "error_code": wait_env.get("error_code"),
                    "error": wait_env.get("error", ""),
                },
            )
            return
        print(f"{case:45} succeeded (not recorded)", file=sys.stderr)

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
    await cap.provoke(
        "stop missing instance", "PUT", f"{missing}/state", "InstanceNotFoundError", body={"action": "stop"}
    )
    await cap.provoke(
        "start missing instance", "PUT", f"{missing}/state", "InstanceNotFoundError", body={"action": "start"}
    )
    await cap.provoke("delete missing instance", "DELETE", missing, "InstanceNotFoundError")
    await cap.provoke(
        "patch missing instance", "PATCH", missing, "InstanceNotFoundError", body={"config": {"user.x": "1"}}
    )
    await cap.provoke(
        "exec in missing instance",
        "POST",
        f"{missing}/exec",
        "InstanceNotFoundError",
        body={"command": ["true"], "wait-for-websocket": True, "interactive": False},
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
    async with cap.session.get("/1.0/instances", params={"project": "coi-errcap-no-such"}) as resp:
        envelope = json.loads(await resp.read())
        if envelope.get("type") == "error":
            cap.record(
                "list instances of missing project",
                "GET",
                "/1.0/instances",
                "NotFoundError",
                kind="refused",
                status=resp.status,
                error=envelope.get("error", ""),
                error_code=envelope.get("error_code"),
            )
        else:  # incusd 6.0 lists an unknown project as empty
            print(
                f"list instances of missing project: {resp.status} {envelope.get('metadata')}",
                file=sys.stderr,
            )

    # A running and a stopped container.
    await cap.ensure("POST", "/1.0/instances", body=create("errcap-run", start=True))
    await cap.ensure("POST", "/1.0/instances", body=create("errcap-stopped", start=False))
    run, stopped = "/1.0/instances/errcap-run", "/1.0/instances/errcap-stopped"

    await cap.provoke(
        "start running instance", "PUT", f"{run}/state", "AlreadyRunningError", body={"action": "start"}
    )
    await cap.provoke(
        "graceful stop of stopped instance",
        "PUT",
        f"{stopped}/state",
        "AlreadyStoppedError",
        body={"action": "stop", "timeout": 5},
    )
    await cap.provoke(
        "forced stop of stopped instance",
        "PUT",
        f"{stopped}/state",
        "AlreadyStoppedError",
        body={"action": "stop", "force": True},
    )
    await cap.provoke(
        "restart of stopped instance",
        "PUT",
        f"{stopped}/state",
        "AlreadyStoppedError",
        body={"action": "restart", "force": True},
    )
    await cap.provoke("delete running instance", "DELETE", run, "InstanceRunningError")
    await cap.provoke(
        "exec in stopped instance",
        "POST",
        f"{stopped}/exec",
        "InstanceNotRunningError",
        body={"command": ["true"], "wait-for-websocket": True, "interactive": False},
    )
    await cap.provoke(
        "create with taken name",
        "POST",
        "/1.0/instances",
        "ConflictError",
        body=create("errcap-run", start=False),
    )

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
        status, raw = await cap.raw(
            "POST",
            f"{inst}/files",
            params={"path": "/errcap/no/such/file"},
        )
        envelope = json.loads(raw) if raw.strip() else {}
        cap.record(
            f"files POST into missing directory ({where})",
            "POST",
            f"{inst.split('?')[0]}/files?path=/errcap/no/such/file",
            "NotFoundError",
            kind="refused",
            status=status,
            error=envelope.get("error", ""),
            error_code=envelope.get("error_code"),
        )
        # make_directory of a directory that exists (archive.py suppresses ConflictError).
        async with cap.session.post(
            f"{inst}/files",
            params={"path": "/tmp", "project": cap.project},
            data=b"",
            headers={"X-Incus-type": "directory", "X-Incus-mode": "0755", "X-Incus-write": "overwrite"},
        ) as resp:
            raw = await resp.read()
            envelope = json.loads(raw) if raw.strip() else {}
            if envelope.get("type") == "error":
                cap.record(
                    f"files POST directory that exists ({where})",
                    "POST",
                    f"{inst}/files?path=/tmp",
                    "ConflictError",
                    kind="refused",
                    status=resp.status,
                    error=envelope.get("error", ""),
                    error_code=envelope.get("error_code"),
                )
            else:
                print(
                    f"files POST directory that exists ({where}): accepted ({resp.status})", file=sys.stderr
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
    await cap.provoke(
        "create with raw.idmap outside the allowed range",
        "POST",
        "/1.0/instances",
        "OperationFailedError",
        body=create("errcap-map1", start=True, config={"raw.idmap": "both 4000000000 1000"}),
    )
    await cap.provoke(
        "create with security.idmap.size too small",
        "POST",
        "/1.0/instances",
        "IdmapUnsupportedError",
        body=create(
            "errcap-map2",
            start=True,
            config={"security.idmap.isolated": "true", "security.idmap.size": "4294967295"},
        ),
    )

    await cap.provoke(
        "create with raw.idmap of a host uid not in /etc/subuid",
        "POST",
        "/1.0/instances",
        "OperationFailedError",
        body=create("errcap-map3", start=True, config={"raw.idmap": "both 2000 1000"}),
    )
    await cap.provoke(
        "create with a malformed raw.idmap",
        "POST",
        "/1.0/instances",
        "OperationFailedError",
        body=create("errcap-map4", start=True, config={"raw.idmap": "both x 1000"}),
    )
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
        await cap.provoke(
            f"forced stop while a start runs ({attempt})",
            "PUT",
            f"{busy}/state",
            "by-text",
            body={"action": "stop", "force": True},
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
        await cap.provoke(
            f"start while a create runs ({attempt})",
            "PUT",
            f"/1.0/instances/{name}/state",
            "by-text",
            body={"action": "start"},
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
    await cap.provoke(
        "graceful stop whose timeout passes",
        "PUT",
        f"{stubborn}/state",
        "StopTimedOutError",
        body={"action": "stop", "timeout": 1},
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
    await cap.provoke(
        "forced stop while a stop runs",
        "PUT",
        f"{stubborn}/state",
        "by-text",
        body={"action": "stop", "force": True},
    )
    await cap.provoke(
        "start while a stop runs",
        "PUT",
        f"{stubborn}/state",
        "by-text",
        body={"action": "start"},
    )
    await cap.provoke("delete while a stop runs", "DELETE", stubborn, "InstanceRunningError")
    await cap.wait(op, poll_s=30)

    # Two creates of one name at once; the loser may see the name busy, or taken.
    for attempt in range(5):
        name = f"errcap-race{attempt}"
        body = create(name, start=True)
        results = await asyncio.gather(*(cap.raw("POST", "/1.0/instances", body=body) for _ in range(2)))
        outcomes: list[tuple[str, int, str]] = []
        for status, raw in results:
            envelope = json.loads(raw)
            if envelope.get("type") == "error":
                outcomes.append(("refused", status, envelope["error"]))
            else:
                _, _, op_meta = await cap.wait(envelope["operation"])
                outcomes.append(("operation", op_meta.get("status_code", 0), op_meta.get("err", "")))
        for kind, code, text in outcomes:
            if text:
                expect = "by-text"
                if kind == "refused":
                    cap.record(
                        f"concurrent create of one name ({attempt})",
                        "POST",
                        "/1.0/instances",
                        expect,
                        kind=kind,
                        status=code,
                        error=text,
                        error_code=code,
                    )
                else:
                    cap.record(
                        f"concurrent create of one name ({attempt})",
                        "POST",
                        "/1.0/instances",
                        expect,
                        kind=kind,
                        status_code=code,
                        err=text,
                    )
        # And a start racing the create's own start.
        if any("busy" in text for _, _, text in outcomes):
            break

    # Two deletes of one stopped instance at once.
    await cap.ensure("POST", "/1.0/instances", body=create("errcap-del", start=False))
    results = await asyncio.gather(*(cap.raw("DELETE", "/1.0/instances/errcap-del") for _ in range(2)))
    for status, raw in results:
        envelope = json.loads(raw)
        if envelope.get("type") == "error":
            cap.record(
                "concurrent delete",
                "DELETE",
                "/1.0/instances/errcap-del",
                "NotFoundError",
                kind="refused",
                status=status,
                error=envelope["error"],
                error_code=envelope.get("error_code"),
            )
        elif envelope.get("type") == "async":
            _, _, op_meta = await cap.wait(envelope["operation"])
            if op_meta.get("err"):
                cap.record(
                    "concurrent delete",
                    "DELETE",
                    "/1.0/instances/errcap-del",
                    "OperationFailedError",
                    kind="operation",
                    status_code=op_meta.get("status_code"),
                    err=op_meta["err"],
                )


async def cleanup(cap: Capture) -> None:
    _, raw = await cap.raw("GET", "/1.0/instances")
    for url in json.loads(raw).get("metadata") or []:
        path = url.split("?", 1)[0]
        _, raw = await cap.raw("PUT", f"{path}/state", body={"action": "stop", "force": True})
        envelope = json.loads(raw)
        if envelope.get("type") == "async":
            await cap.wait(envelope["operation"])
        _, raw = await cap.raw("DELETE", path)
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
