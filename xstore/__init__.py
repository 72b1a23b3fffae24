"""xstore: move Nix store paths between machines and filesystems without losing a byte.

Reads and writes NAR archives and `nix-store --export` streams, keeps a Nix-compatible store, and applies
Nix's `~nix~case~hack~N` renaming where the destination filesystem folds case. See ARCHITECTURE.md for
the layers: formats (sans-IO) below orchestration below the CLI.
"""

__version__ = "0.1.0"
