"""The Starlette layer: reads, run commands and SSE tails over the ledger."""

from __future__ import annotations

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
"""Request bodies larger than this are refused with 413 unless ``serve --max-body-bytes`` says otherwise."""
