"""The command line: parsing, rendering, and the one place errors become text and exit codes."""
