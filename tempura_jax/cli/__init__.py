"""Command-line entry points. Each module's `main(argv) -> int` is a console
script (pyproject.toml `[project.scripts]`) and `launch/<name>.py` runs it
from a clone without installing."""
