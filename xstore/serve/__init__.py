"""Serving a store to other machines: over HTTP as a binary cache (`serve.http`, on `serve.routes`),
and over ssh as the far end of the `nix-store --serve` protocol (`serve.ssh`)."""
