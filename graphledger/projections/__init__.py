"""Read models folded from the log: run status and token usage (pure; no I/O)."""
