"""The `sluice` command line: run the stack, manage keys, read usage, export models."""
