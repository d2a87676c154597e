"""``python -m jwtgate``: the same as the ``jwtgate`` console script."""

from jwtgate.cli.main import main

if __name__ == "__main__":
    main()
