"""pyfuse3 filesystems: case-insensitive layer, NAR view, store view, mount lifecycle."""
