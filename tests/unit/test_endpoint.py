from __future__ import annotations

from pathlib import Path

from coi_async.incus.endpoint import UnixEndpoint, resolve_socket


def test_incus_socket_variable_wins() -> None:
    env = {"INCUS_SOCKET": "/x/s", "INCUS_DIR": "/d"}
    assert resolve_socket(env, exists=lambda p: True, writable=lambda p: True) == UnixEndpoint(Path("/x/s"))


def test_incus_dir_next() -> None:
    found = resolve_socket({"INCUS_DIR": "/d"}, exists=lambda p: True, writable=lambda p: True)
    assert found.socket == Path("/d/unix.socket")


def test_run_socket_when_present_else_var_lib() -> None:
    present = resolve_socket({}, exists=lambda p: True, writable=lambda p: True)
    assert present.socket == Path("/run/incus/unix.socket")
    absent = resolve_socket({}, exists=lambda p: False, writable=lambda p: True)
    assert absent.socket == Path("/var/lib/incus/unix.socket")


def test_incus_user_socket_when_only_it_is_writable() -> None:
    found = resolve_socket(
        {"INCUS_DIR": "/d"},
        exists=lambda p: True,
        writable=lambda p: p.name == "unix.socket.user",
        euid=1234,
    )
    assert found == UnixEndpoint(Path("/d/unix.socket.user"), default_project="user-1234")
