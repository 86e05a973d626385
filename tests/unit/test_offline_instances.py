"""An instance listing from a cluster with an offline member: that member's instances come with
null config and devices and status Error; the listing is read all the same."""

from __future__ import annotations

import json

from coi_async.incus.instances import decode_instances


def test_an_offline_members_instance_is_read_and_known_as_such() -> None:
    raw = json.dumps(
        [
            {"name": "a", "status": "Running", "location": "m1", "config": {"k": "v"}, "devices": {}},
            {
                "name": "b",
                "status": "Error",
                "status_code": 112,
                "location": "m3",
                "config": None,
                "devices": None,
                "expanded_config": None,
                "expanded_devices": None,
                "profiles": None,
            },
        ]
    ).encode()
    a, b = decode_instances(raw)
    assert (a.config, a.on_offline_member) == ({"k": "v"}, False)
    assert (b.config, b.profiles, b.location, b.on_offline_member) == ({}, [], "m3", True)


def test_a_standalone_servers_error_instance_is_not_offline() -> None:
    [one] = decode_instances(b'[{"name": "x", "status": "Error", "location": "none", "config": {}}]')
    assert not one.on_offline_member
