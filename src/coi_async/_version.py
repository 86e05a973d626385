"""The version, in one place: hatchling reads it from here at build time (pyproject.toml), and
`coi --version` without importing anything else."""

__version__ = "0.1.0"
