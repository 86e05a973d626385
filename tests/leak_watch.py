"""Counting what would leave the machine for a test subnet: an nftables table of the test's own
that counts, at the host's postrouting, every packet to or from the subnet going out of the
default route's interface (the guard route should make that impossible; this proves it).

Only the subnet's packets are counted: the interface's own counters move with everything else
the machine does."""

from __future__ import annotations

import json
import subprocess


def _nft(*args: str, stdin: str = "") -> str:
    done = subprocess.run(["nft", *args], input=stdin.encode(), capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nft {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.stdout.decode()


def default_interface() -> str:
    """The interface of the host's IPv4 default route ("" when there is none)."""
    routes = json.loads(
        subprocess.run(["ip", "-j", "route", "show", "default"], capture_output=True, check=True).stdout
    )
    return str(routes[0].get("dev", "")) if routes else ""


class LeakWatch:
    def __init__(self, tag: str, subnet: str) -> None:
        self.table = f"coi_leak_{tag}"
        self.subnet = subnet
        self.interface = default_interface()
        self.made = False

    def start(self) -> None:
        if not self.interface:
            return  # nothing can leave by a default route the machine does not have
        _nft(
            "-f",
            "-",
            stdin=f"""table inet {self.table} {{
                chain out {{
                    type filter hook postrouting priority 0; policy accept;
                    oifname "{self.interface}" ip daddr {self.subnet} counter
                    oifname "{self.interface}" ip saddr {self.subnet} counter
                }}
            }}""",
        )
        self.made = True

    def packets(self) -> int:
        """The subnet's packets that went out of the default route's interface so far."""
        if not self.made:
            return 0
        ruleset = json.loads(_nft("-j", "list", "table", "inet", self.table))
        return sum(
            int(expr["counter"]["packets"])
            for item in ruleset["nftables"]
            if "rule" in item
            for expr in item["rule"]["expr"]
            if "counter" in expr
        )

    def stop(self) -> None:
        if self.made:
            _nft("delete", "table", "inet", self.table)
            self.made = False
