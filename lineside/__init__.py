"""The `lineside` command: one entry point over the runtime, export and benchmark commands."""
