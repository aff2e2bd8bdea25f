"""``python -m medtune.bench``: see :mod:`medtune.bench` for the figures and :mod:`medtune.bench.cli` for the options."""

from medtune.bench.cli import main

if __name__ == "__main__":
    main()
