"""`python -m xstore`: the same entry point as the `xstore` console script."""

from xstore.cli.entry import main

if __name__ == "__main__":
    main()
