"""Serving a store to others: as a binary cache over HTTP (`serve.http`, on `serve.routes`)."""
