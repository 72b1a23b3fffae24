"""Stores on the far side of a protocol: `ssh://` (`nix-store --serve`), and the Nix daemon (`unix://`,
`daemon`, `ssh-ng://`). Each is a blocking driver around a sans-IO connection in `xstore.protocols`."""
