"""`coi run`'s watcher (containers/watchdog.py) when incusd fails or ends its exec, on a real incusd."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import anyio
import pytest

from coi_async.config import resolve_config
from coi_async.incus import IncusClient
from coi_async.incus.models import InstancePatch
from coi_async.naming import PREFIX_ENV, workspace_hash
from coi_async.orchestration.containers.watchdog import powered_off_on_release
from coi_async.orchestration.events import Event, Note
from coi_async.orchestration.sessions.run import RunRequest, run_command
from tests.helpers import BUSYBOX_IMAGE

pytestmark = pytest.mark.incus

PREFIX = "h3wd-"
# Ends the watcher's exec from inside, as incusd losing it does: the exec'd shell and the `cat`
# that feeds the watcher its input go (the only process whose command line is just `cat`).
END_THE_EXEC = r"""
for d in /proc/[0-9]*; do
    [ "$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null)" = "cat " ] || continue
    set -- $(cat "$d/stat")
    kill -9 "$4" "${d#/proc/}"
done
"""


async def running(incus: IncusClient, name: str) -> bool:
    # The instance, not its state: asking a stopping container its state can fail.
    return (await incus.get_instance(name)).running


async def gone_soon(incus: IncusClient, workspace: Path, *, within_s: float = 20) -> bool:
    """Whether the workspace's containers are all gone within `within_s` (powered off, then
    deleted by incusd)."""
    h = workspace_hash(str(workspace))
    with anyio.move_on_after(within_s):
        while [i for i in await incus.list_instances() if i.name.startswith(f"{PREFIX}{h}-")]:  # noqa: ASYNC110 - polling incusd
            await anyio.sleep(0.1)
        return True
    return False


async def test_run_survives_a_watcher_exec_incusd_could_not_start(
    incus: IncusClient, incus_project: str, home: Path, workspace: Path
) -> None:
    # With the container's process limit used up, incusd fails every exec before its command
    # starts ("Failed to retrieve PID of executing child process"), as it does now and then right
    # after a start or under load. The limit is cut to one process (the busybox init and its
    # sleep are two already: nothing more can start) the moment the container is launched,
    # before the watcher's exec, and lifted 0.3 s later: the watcher must still come up.
    text = f'[defaults]\nimage = "{BUSYBOX_IMAGE}"\n[network]\nmode = "open"\n'
    config = resolve_config([("config.toml", text)], {PREFIX_ENV: PREFIX}, home=str(home))
    filled = threading.Event()
    filled_at: list[float] = []

    def exhaust_then_lift(name: str) -> None:
        async def go() -> None:
            async with IncusClient.connect(project=incus_project) as own:
                # Not before the init has its sleep: an init whose own fork fails exits, and the
                # container goes (a loaded host returns from the launch that early).
                with anyio.fail_after(30):
                    while (await own.get_instance_state(name)).processes < 2:  # noqa: ASYNC110 - polling incusd
                        await anyio.sleep(0.02)
                await own.update_instance(name, InstancePatch(config={"limits.processes": "1"}))
                filled_at.append(time.monotonic())
                filled.set()
                await anyio.sleep(0.3)
                await own.update_instance(name, InstancePatch(config={"limits.processes": "1000"}))

        anyio.run(go)

    helper: list[threading.Thread] = []

    def emit(event: Event) -> None:
        # Emitted between the launch and the watcher's start; holding the loop here (the limit is
        # set from a thread of its own) makes the watcher's first exec meet the used-up limit.
        if isinstance(event, Note) and event.kind == "run.launching":
            helper.append(threading.Thread(target=exhaust_then_lift, args=(event.item,)))
            helper[0].start()
            assert filled.wait(60)

    out: list[bytes] = []

    async def keep(data: bytes) -> None:
        out.append(data)

    async def drop(data: bytes) -> None:
        del data

    # The command lists the container's processes: the watcher's script is among them.
    request = RunRequest(
        workspace=str(workspace),
        argv=("sh", "-c", "ps -o args; exit 7"),
        host_uid=os.getuid(),
        host_gid=os.getgid(),
    )
    try:
        with anyio.fail_after(120):
            code = await run_command(incus, config, request, on_stdout=keep, on_stderr=drop, emit=emit)
    finally:
        for thread in helper:
            thread.join(60)
    assert filled_at, "the run never launched"
    took = time.monotonic() - filled_at[0]
    assert code == 7
    assert b"poweroff" in b"".join(out)  # the watcher ran while the command did
    assert took < 10  # and was not waited for in vain (for its ready bound, 10 s)
    assert await gone_soon(incus, workspace)


async def test_a_watcher_whose_exec_ends_while_coi_holds_on_is_replaced(incus: IncusClient, box: str) -> None:
    async with powered_off_on_release(incus, box) as watcher:
        assert await watcher.in_place()
        first = (await incus.exec(box, ["cat", "/run/coi-watchdog"])).stdout
        ended = await incus.exec(box, ["sh", "-c", END_THE_EXEC])
        assert ended.exit_code == 0, ended.stderr
        await anyio.sleep(5)  # the old watcher's grace (3 s) and some
        assert await running(incus, box)
        assert (await incus.exec(box, ["cat", "/run/coi-watchdog"])).stdout not in (b"", first)
    with anyio.fail_after(20):
        while await running(incus, box):  # noqa: ASYNC110 - polling incusd
            await anyio.sleep(0.1)
