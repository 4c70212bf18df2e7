"""The `xcit-edge` command line: parse, call the library, print. No logic lives here.

One module per command (`build`, `inspect`, `convert`, `validate`, `reference`, `bench`), the group and
its error handling in `app`, options several commands share in `options`, progress output in `progress`.

Exit codes: 0 success, 1 some target failed to convert or to run, 2 bad input or usage (one
line on stderr, no traceback), 70 internal error (rerun with --debug for the traceback),
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from xcit_edge.cli import bench, build, convert, inspect, reference, validate  # noqa: F401 - registers the commands
from xcit_edge.cli.app import main

__all__ = ["main"]
