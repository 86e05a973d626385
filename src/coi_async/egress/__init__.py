"""Egress for containers without a network interface: an allowlisting forward proxy on the host."""

from coi_async.egress.proxy import (
    DEFAULT_ALLOWLIST,
    Allowlist,
    EgressProxy,
    ProxyEvent,
)

__all__ = ["DEFAULT_ALLOWLIST", "Allowlist", "EgressProxy", "ProxyEvent"]
