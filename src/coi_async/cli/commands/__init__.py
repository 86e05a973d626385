"""One module per command family; each exposes its asyncclick command(s) for cli.main to register."""
