"""Nix's wire protocols as sans-IO connection objects: `serve` (`nix-store --serve`), `worker` (the
daemon). No sockets, pipes or processes here; `xstore.remote` and `xstore.serve` drive them."""
