"""Remotes: the other incusd servers coi works on, kept in the user's config dir, and adding one."""
