"""The Starlette layer: reads, run commands and SSE tails over the ledger."""
