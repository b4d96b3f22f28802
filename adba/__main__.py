"""``python -m adba`` is ``adba``."""

from adba.cli import run

run()
