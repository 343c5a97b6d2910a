"""Serving a trained run over HTTP: `sibrar serve` (FastAPI app, thread-safe service, added-items store)."""
