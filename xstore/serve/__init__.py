"""Serving a store to other machines: `ssh` (the `nix-store --serve` protocol on stdin and stdout)."""
