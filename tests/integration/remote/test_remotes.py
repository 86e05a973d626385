"""`coi remote add|list|switch|remove`, and what a wrong token, a changed server certificate, a
remote that no longer trusts coi or one that does not answer come to: one line, within a
deadline, nothing kept. Against this machine's incusd on loopback HTTPS (harness.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import stat
from pathlib import Path

import anyio
import anyio.abc
import pytest

from coi_async.incus.certificates import fingerprint_of
from tests.coi_cli import coi
from tests.integration.remote.harness import (
    REMOTE,
    Remotes,
    server_certificate,
    server_fingerprint,
)
from tests.integration.test_https import SERVER_CERT

pytestmark = pytest.mark.incus


async def test_add_list_switch_remove(remotes: Remotes) -> None:
    world = remotes.world
    done = await remotes.add()
    assert done.code == 0, done.stderr
    assert f"Certificate fingerprint: {server_fingerprint()}" in done.stdout
    conf = remotes.config_dir
    for name in ("client.crt", "client.key", "remotes.json", f"servercerts/{REMOTE}.crt"):
        assert stat.S_IMODE((conf / name).stat().st_mode) == 0o600, name
    assert (conf / f"servercerts/{REMOTE}.crt").read_text() == SERVER_CERT.read_text()

    listed = json.loads((await world.run("remote", "list", "--format", "json")).stdout)
    assert [(r["name"], r["url"], r["current"]) for r in listed] == [
        ("local", listed[0]["url"], True),
        (REMOTE, remotes.url, False),
    ]
    assert listed[1]["fingerprint"] == server_fingerprint()
    # Over the remote: the project's (empty) sessions.
    over = await world.run("--remote", REMOTE, "list")
    assert over.code == 0, over.stderr

    again = await remotes.add()
    again.one_error(2, f"remote '{REMOTE}' exists already")

    switched = await world.run("remote", "switch", REMOTE)
    assert switched.code == 0, switched.stderr
    text = (await world.run("remote", "list")).stdout
    assert f"* {REMOTE}" in text, text
    assert (await world.run("list")).code == 0
    (await world.run("remote", "switch", "nowhere")).one_error(2, "no remote 'nowhere'")
    (await world.run("--remote", "nowhere", "list")).one_error(2, "unknown remote 'nowhere'")

    removed = await world.run("remote", "remove", REMOTE)
    assert removed.code == 0, removed.stderr
    assert "the default is local again" in removed.stdout
    assert not (conf / f"servercerts/{REMOTE}.crt").exists()
    assert [
        r["name"] for r in json.loads((await world.run("remote", "list", "--format", "json")).stdout)
    ] == ["local"]
    (await world.run("remote", "remove", REMOTE)).one_error(2, f"no remote '{REMOTE}'")
    (await world.run("remote", "remove", "local")).one_error(2, "'local'")


async def test_a_bad_token_or_url_is_one_line_and_keeps_nothing(remotes: Remotes) -> None:
    world = remotes.world
    token = json.loads(base64.b64decode(await remotes.token()))
    wrong = base64.b64encode(json.dumps({**token, "secret": "0" * 64}).encode()).decode()
    refused = await world.run("remote", "add", REMOTE, remotes.url, "--token", wrong)
    refused.one_error(1, "refused the token")
    other = base64.b64encode(json.dumps({**token, "fingerprint": "ab" * 32}).encode()).decode()
    (await world.run("remote", "add", REMOTE, remotes.url, "--token", other)).one_error(
        3, "but the token is for " + "ab" * 32
    )
    (await world.run("remote", "add", REMOTE, remotes.url, "--token", "nonsense")).one_error(
        2, "not an Incus trust token"
    )
    (await world.run("remote", "add", REMOTE, "http://127.0.0.1:1", "--token", wrong)).one_error(
        2, "expected https://HOST[:PORT]"
    )
    (await world.run("remote", "add", "local", remotes.url, "--token", wrong)).one_error(2, "'local'")
    with anyio.fail_after(30):
        unreachable = await world.run("remote", "add", REMOTE, "https://127.0.0.1:1", "--token", wrong)
    unreachable.one_error(3, "cannot reach incusd at https://127.0.0.1:1")
    assert not (remotes.config_dir / "remotes.json").exists()
    assert not (remotes.config_dir / "servercerts" / f"{REMOTE}.crt").exists()


async def test_a_changed_server_certificate_names_both_fingerprints(remotes: Remotes) -> None:
    world = remotes.world
    assert (await remotes.add()).code == 0
    # Pin another certificate, as if the server had changed its own since.
    other = remotes.config_dir / "client.crt"
    pinned = remotes.config_dir / "servercerts" / f"{REMOTE}.crt"
    pinned.write_text(other.read_text())
    der = ssl.PEM_cert_to_DER_cert(other.read_text())
    store = remotes.config_dir / "remotes.json"
    data = json.loads(store.read_text())
    data["remotes"][REMOTE]["fingerprint"] = hashlib.sha256(der).hexdigest()
    store.write_text(json.dumps(data))
    with anyio.fail_after(60):
        done = await world.run("--remote", REMOTE, "list")
    done.one_error(3, f"remote '{REMOTE}'", "changed", hashlib.sha256(der).hexdigest(), server_fingerprint())


async def test_a_remote_that_no_longer_trusts_coi_says_so(remotes: Remotes) -> None:
    world = remotes.world
    assert (await remotes.add()).code == 0
    cert = remotes.config_dir / "client.crt"
    await world.incus.delete_certificate(fingerprint_of(cert.read_text()))
    done = await world.run("--remote", REMOTE, "list")
    done.one_error(1, f"remote '{REMOTE}' ({remotes.url}) does not trust coi's certificate")


async def test_the_project_given_to_add_is_the_remotes_own(remotes: Remotes) -> None:
    world = remotes.world
    token = await remotes.token()
    added = await world.run(
        "--project", world.project, "remote", "add", REMOTE, remotes.url, "--token", token
    )
    assert added.code == 0, added.stderr
    [_, listed] = json.loads((await world.run("remote", "list", "--format", "json")).stdout)
    assert listed["project"] == world.project
    text = (await world.run("remote", "list")).stdout
    assert f"  project {world.project}" in text, text
    env = {k: v for k, v in world.env().items() if k != "INCUS_PROJECT"}
    # The token admits the test's project only: this works because the remote keeps it.
    over = await coi("--remote", REMOTE, "list", env=env, cwd=world.workspace)
    assert over.code == 0, over.stderr
    elsewhere = await coi("--remote", REMOTE, "--project", "default", "list", env=env, cwd=world.workspace)
    assert elsewhere.code != 0


async def test_a_silent_server_is_an_error_within_the_deadline(remotes: Remotes) -> None:
    world = remotes.world
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as tg,
    ):
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def hold(stream: anyio.abc.SocketStream) -> None:
            async with stream:  # accepted, never answered; closed when the test ends
                await anyio.sleep_forever()

        tg.start_soon(listener.serve, hold)
        silent = f"https://127.0.0.1:{port}"
        with anyio.fail_after(30):
            added = await world.run("remote", "add", REMOTE, silent, "--token", await remotes.token())
        added.one_error(3, f"cannot reach incusd at {silent}", "no TLS handshake within")

        # A remote added while it answered, silent since.
        assert (await remotes.add()).code == 0
        store = remotes.config_dir / "remotes.json"
        data = json.loads(store.read_text())
        data["remotes"][REMOTE]["url"] = silent
        store.write_text(json.dumps(data))
        with anyio.fail_after(30):
            listed = await world.run("--remote", REMOTE, "list")
        listed.one_error(3, f"cannot reach incusd at {silent}")
        tg.cancel_scope.cancel()


async def test_a_remote_that_shakes_hands_and_never_answers_is_an_error_within_the_deadline(
    remotes: Remotes, tmp_path: Path
) -> None:
    from anyio.streams.tls import TLSListener

    world = remotes.world
    assert (await remotes.add()).code == 0
    cert, key = server_certificate(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = tcp.extra(anyio.abc.SocketAttribute.local_port)
    async with TLSListener(tcp, ctx) as listener, anyio.create_task_group() as tg:

        async def hold(stream: anyio.abc.ByteStream) -> None:
            async with stream:  # a TLS handshake, then nothing
                await anyio.sleep_forever()

        tg.start_soon(listener.serve, hold)
        # The remote, pinned to this server's certificate, now lives there.
        (remotes.config_dir / "servercerts" / f"{REMOTE}.crt").write_text(cert.read_text())
        store = remotes.config_dir / "remotes.json"
        data = json.loads(store.read_text())
        data["remotes"][REMOTE].update(
            url=f"https://127.0.0.1:{port}", fingerprint=fingerprint_of(cert.read_text())
        )
        store.write_text(json.dumps(data))
        with anyio.fail_after(40):
            done = await world.run("--remote", REMOTE, "list")
        done.one_error(3, f"remote '{REMOTE}' (https://127.0.0.1:{port}) did not answer within")
        tg.cancel_scope.cancel()


async def test_a_token_alone_adds_the_remote_at_the_first_address_that_answers(remotes: Remotes) -> None:
    world = remotes.world
    token = json.loads(base64.b64decode(await remotes.token()))
    address = remotes.url.removeprefix("https://")
    # A token names every address of its server; the first here answers nothing.
    both = base64.b64encode(json.dumps({**token, "addresses": ["127.0.0.1:1", address]}).encode()).decode()
    added = await world.run("remote", "add", REMOTE, both)
    assert added.code == 0, added.stderr
    assert "https://127.0.0.1:1 did not answer; trying the token's next address" in added.stderr
    listed = json.loads((await world.run("remote", "list", "--format", "json")).stdout)
    assert [r["url"] for r in listed if r["name"] == REMOTE] == [remotes.url]
    assert (await world.run("--remote", REMOTE, "list")).code == 0

    none = base64.b64encode(json.dumps({**token, "addresses": []}).encode()).decode()
    (await world.run("remote", "add", "other", none)).one_error(2, "the token names no address")
    (await world.run("remote", "add", "other", remotes.url)).one_error(2, "missing --token")
