"""Bad network input on the command line and in config: one line naming the argument or the file and
key, exit 2, before anything reaches incusd (the socket given here does not exist)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.coi_cli import Run, coi_sync

NO_INCUS = "/nonexistent/unix.socket"


def run(*args: str, config: str = "") -> Run:
    if config:
        return coi_sync(*args, timeout=60, INCUS_SOCKET=NO_INCUS, COI_CONFIG=config)
    return coi_sync(*args, timeout=60, INCUS_SOCKET=NO_INCUS)


@pytest.mark.parametrize(
    "command", [("shell", "--network", "wide"), ("run", "--network", "wide", "--", "true")]
)
def test_an_unknown_mode_flag_is_a_usage_error(command: tuple[str, ...]) -> None:
    run(*command).one_error(2, "invalid --network 'wide': must be one of restricted, open, allowlist")


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ('[network]\nmode = "wide"\n', ("'network.mode' must be one of restricted, open, allowlist",)),
        ('[network]\nallowed_domains = ["exa mple.com"]\n', ("'network.allowed_domains'", "bad domain")),
        ('[network]\nallowed_domains = ["*.x.*"]\n', ("'network.allowed_domains'", "bad")),
        ('[network]\nallowed_domains = ["10.0.0.0/33"]\n', ("'network.allowed_domains'", "bad CIDR range")),
        ('[network]\nallowed_domains = ["a\\u0000b.com"]\n', ("'network.allowed_domains'",)),
        ('[profiles.p.network]\nmode = "x"\n', ("'profiles.p.network.mode' must be one of",)),
        (
            '[profiles.p.network]\nallowed_domains = ["ok.org", "bad*.org"]\n',
            ("'profiles.p.network.allowed_domains'", "'*' only as a leading '*.'"),
        ),
        ("[profiles.p.network]\nmodes = 1\n", ("unknown key 'profiles.p.network.modes'",)),
    ],
)
def test_bad_network_config_names_the_file_and_key(
    tmp_path: Path, toml: str, fragments: tuple[str, ...]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    run("run", "--", "true", config=str(config)).one_error(2, str(config), *fragments)


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("exa mple.com", "bad domain"),
        ("*.x.*", "bad"),
        ("10.0.0.0/33", "bad CIDR range"),
        ("a\x01b.org", "bad domain"),
        ("host:99999", "bad port"),
    ],
)
@pytest.mark.parametrize("verb", ["allow", "deny"])
def test_a_bad_host_argument_is_a_usage_error(verb: str, host: str, fragment: str) -> None:
    run("network", verb, "some-container", host).one_error(2, f"invalid HOST '{host}'", fragment)


def test_status_without_a_daemon() -> None:
    done = run("egress", "status")
    assert done.code == 1
    assert done.stdout.strip() == "Egress daemon: not running"
    stopped = run("egress", "stop")
    assert stopped.code == 0
    assert stopped.stdout.strip() == "Egress daemon was not running"
