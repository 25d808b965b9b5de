"""``python cli.py ...`` is ``tfmq-export ...`` (the project card's top-level entry point)."""

from tfmq_export.cli import main

if __name__ == "__main__":
    main()
