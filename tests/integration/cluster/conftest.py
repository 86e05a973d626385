"""The cluster the cluster tests share (one bring-up for the package), and a coi client of it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.cluster_harness import Cluster, running_cluster
from tests.helpers import DEBIAN_IMAGE
from tests.integration.cluster.client import REMOTE, Client


@pytest.fixture(scope="package")
def cluster() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("a cluster on this machine needs root (network and mount namespaces)")
    with running_cluster() as c:
        print(f"cluster up in {c.up_s:.1f} s ({c.net}.0/24, {c.tag})")
        yield c


@pytest.fixture(scope="package")
def client(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Client:
    c = Client(cluster, tmp_path_factory.mktemp("cluster-client"))
    c.workspace.mkdir()
    conf = c.home / ".config" / "coi"
    conf.mkdir(parents=True)
    (conf / "config.toml").write_text(f'[defaults]\nimage = "{DEBIAN_IMAGE}"\n[network]\nmode = "open"\n')
    claude = c.home / ".claude"
    claude.mkdir()
    (claude / ".credentials.json").write_text('{"claudeAiOauth": {"accessToken": "test-token"}}')
    added = c.run("remote", "add", REMOTE, cluster.url, "--token", cluster.trust_token("coi-cluster-test"))
    assert added.code == 0, added.stderr
    return c


@pytest.fixture
def fresh(client: Client) -> Iterator[Client]:
    """The client, with every instance of the cluster removed afterwards."""
    try:
        yield client
    finally:
        client.cluster.delete_instances()
