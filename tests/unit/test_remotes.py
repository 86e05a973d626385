"""remotes: names, URLs, trust tokens, which remote a command uses, where a workspace is there;
and the `[incus] remote` / `[remotes.NAME]` config keys."""

from __future__ import annotations

import base64
import errno
import json
import stat
from pathlib import Path

import pytest

from coi_async.config import resolve_config
from coi_async.errors import ConfigError, IncusError, UsageError
from coi_async.incus.certificates import fingerprint_of
from coi_async.incus.server_cert import split_url
from coi_async.incus.transport import _unavailable
from coi_async.orchestration.remotes import store as remote_store
from coi_async.remotes import (
    Remote,
    RemoteStore,
    check_name,
    choose,
    decode_token,
    normalize_url,
    remote_workspace,
)

HOME = "/home/u"
USER = "/home/u/.config/coi/config.toml"
WORKSPACE = "/home/u/proj/.coi.toml"
LAB = Remote(url="https://lab:8443", fingerprint="ab" * 32)


@pytest.mark.parametrize("name", ["lab", "Lab-2", "a.b_c", "x" * 63])
def test_good_names(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 64, "ä"])
def test_bad_names(name: str) -> None:
    with pytest.raises(UsageError, match="invalid remote name"):
        check_name(name)


def test_local_is_not_a_remote_name() -> None:
    with pytest.raises(UsageError, match="'local'"):
        check_name("local")


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("https://lab", "https://lab:8443"),
        ("https://lab:9443/", "https://lab:9443"),
        ("https://127.0.0.1:18443", "https://127.0.0.1:18443"),
        ("https://[::1]:8443", "https://[::1]:8443"),
        (" https://LAB ", "https://lab:8443"),
    ],
)
def test_urls(url: str, normal: str) -> None:
    assert normalize_url(url) == normal


@pytest.mark.parametrize(
    "url",
    [
        "http://lab",
        "lab:8443",
        "https://",
        "https://lab/x",
        "https://lab:99999",
        "https://u@lab",
        "https://lab?q",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(UsageError, match="invalid remote URL"):
        normalize_url(url)


def _token(**fields: object) -> str:
    return base64.b64encode(json.dumps(fields).encode()).decode()


def test_tokens() -> None:
    token = decode_token(
        _token(client_name="c", fingerprint="f" * 64, addresses=["1.2.3.4:8443"], secret="s")
    )
    assert (token.client_name, token.fingerprint, token.addresses) == ("c", "f" * 64, ["1.2.3.4:8443"])
    # Incus's tokens are padded base64; one without its padding still reads.
    assert decode_token(_token(secret="s").rstrip("=")).secret == "s"


@pytest.mark.parametrize(
    "token", ["nonsense", "", _token(client_name="c"), base64.b64encode(b"[1]").decode()]
)
def test_bad_tokens(token: str) -> None:
    with pytest.raises(UsageError, match="not an Incus trust token"):
        decode_token(token)


def test_which_remote() -> None:
    store = RemoteStore(default="lab", remotes={"lab": LAB, "other": LAB})
    assert choose(None, {}, "", RemoteStore()) == ("local", None)
    assert choose(None, {}, "", store) == ("lab", LAB)
    assert choose(None, {}, "other", store)[0] == "other"
    assert choose(None, {"COI_REMOTE": "local"}, "other", store)[0] == "local"
    assert choose("other", {"COI_REMOTE": "local"}, "", store)[0] == "other"
    assert choose("local", {}, "lab", store) == ("local", None)
    with pytest.raises(ConfigError, match="unknown remote 'gone' \\(known: local, lab, other"):
        choose("gone", {}, "", store)


def test_remote_workspace() -> None:
    def where(workspace: str, root: str = "") -> str:
        return remote_workspace(workspace, remote="lab", root=root, home=HOME, cwd="/home/u/src")

    assert where("remote:/srv/app/") == "/srv/app"
    assert where(".", root="/data/u") == "/data/u/src"
    assert where("~/x/y", root="/data/u") == "/data/u/x/y"
    assert where("~", root="/data/u") == "/data/u"
    with pytest.raises(UsageError, match="must be absolute"):
        where("remote:srv")
    with pytest.raises(
        UsageError, match=r"workspace /home/u/src is on this machine.*remotes\.lab\] workspace_root"
    ):
        where(".")
    with pytest.raises(UsageError, match="outside /home/u"):
        where("/tmp/x", root="/data/u")
    with pytest.raises(UsageError, match="outside /home/u"):
        where("/home/user2", root="/data/u")


def test_config_keys() -> None:
    text = '[incus]\nremote = "lab"\n[remotes.lab]\nworkspace_root = "/data/u/"\n[remotes.other]\n'
    config = resolve_config([(USER, text)], {}, home=HOME)
    assert config.incus.remote == "lab"
    assert config.remotes["lab"].workspace_root == "/data/u"
    assert "other" not in config.remotes
    assert resolve_config([], {}, home=HOME).incus.remote == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[remotes.lab]\nworkspace_root = "rel"\n', "'remotes.lab.workspace_root' must be an absolute path"),
        ("[remotes.lab]\nbogus = 1\n", "unknown key 'remotes.lab.bogus'"),
        ("[remotes.lab]\nworkspace_root = 1\n", "wrong type for 'remotes.lab.workspace_root'"),
        ("[incus]\nremote = 1\n", "wrong type for 'incus.remote'"),
    ],
)
def test_bad_config_keys(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config([(USER, text)], {}, home=HOME)


def test_an_untrusted_workspace_file_chooses_no_remote_and_maps_no_workspace() -> None:
    text = '[incus]\nremote = "evil"\n[remotes.lab]\nworkspace_root = "/"\n'
    config = resolve_config([(WORKSPACE, text)], {}, home=HOME, untrusted=(WORKSPACE,))
    assert config.incus.remote == ""
    assert config.remotes == {}
    (file,) = config.untrusted
    assert file.ignored == ("incus.remote", "remotes.lab.workspace_root")


def test_store_and_client_certificate_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "coi"
    assert remote_store.load(directory) == RemoteStore()
    store = RemoteStore(default="lab", remotes={"lab": LAB})
    remote_store.save(store, directory)
    assert remote_store.load(directory) == store
    cert, key = remote_store.client_certificate(directory)
    assert remote_store.client_certificate(directory) == (cert, key)
    for path in (directory / "remotes.json", cert, key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert len(fingerprint_of(cert.read_text())) == 64
    assert b"PRIVATE KEY" in key.read_bytes()
    with pytest.raises(ConfigError, match=r"servercerts/lab\.crt is missing"):
        remote_store.endpoint("lab", LAB, directory)
    remote_store.save_server_cert("lab", cert.read_text(), directory)
    endpoint = remote_store.endpoint("lab", LAB, directory)
    assert (endpoint.label, endpoint.fingerprint, endpoint.server_cert) == (
        "lab",
        LAB.fingerprint,
        directory / "servercerts" / "lab.crt",
    )
    (directory / "remotes.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not coi's list of remotes"):
        remote_store.load(directory)


def test_a_remote_that_cannot_be_reached_says_where_and_why() -> None:
    refused = _unavailable(
        "https://lab:8443", ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    )
    assert str(refused) == "cannot reach incusd at https://lab:8443: connection refused"
    assert refused.hint is not None
    assert "core.https_address" in refused.hint
    wrapped = OSError("All connection attempts failed")
    wrapped.__cause__ = OSError(errno.EHOSTUNREACH, "No route to host")
    assert (
        str(_unavailable("https://lab:8443", wrapped))
        == "cannot reach incusd at https://lab:8443: No route to host"
    )


def test_stored_urls_are_split_for_the_handshake() -> None:
    assert split_url("https://lab") == ("lab", 8443)
    assert split_url("https://[::1]:18443") == ("::1", 18443)
    for bad in ("http://lab", "https://lab/x", "https://lab:x"):
        with pytest.raises(IncusError, match="not a remote URL"):
            split_url(bad)


def test_a_config_dir_that_cannot_be_written_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    directory = tmp_path / "file" / "coi"
    with pytest.raises(ConfigError, match=r"cannot write .*remotes\.json"):
        remote_store.save(RemoteStore(), directory)
    with pytest.raises(ConfigError, match=r"cannot write .*client\.key"):
        remote_store.client_certificate(directory)
    with pytest.raises(ConfigError, match=r"cannot write .*lab\.crt"):
        remote_store.save_server_cert("lab", "pem", directory)
