"""Egress for containers without a network interface: HTTP(S) proxying on the host, by policy.

- `policy`, `addresses`: what a session may reach (pure); the host and entry grammar is
  `coi_async.config.network`, shared with the config.
- `http1`, `connection`: one client connection, decided before any connect, then relayed.
- `listener`, `server`, `logfile`, `control`: the per-session sockets with their limits, the
  per-session logs, and the daemon's control socket.
- `netns`: a session's listener made inside its container's network namespace (root only).
- `splice`: bytes moved between sockets inside the kernel.
"""

# The package registries the shipped recipes use: what `coi build` may reach by default.
DEFAULT_ALLOWLIST: tuple[str, ...] = ("deb.debian.org", "security.debian.org", "registry.npmjs.org")

__all__ = ["DEFAULT_ALLOWLIST"]
