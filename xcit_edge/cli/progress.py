"""Progress on stderr for long commands: rich bars on a terminal, one plain line per step off one."""

from __future__ import annotations

import sys
import time

import click


class Bars:
    """Progress on stderr: rich bars on a terminal; off one (CI logs, `2>log`) one plain line per step, so a
    long phase is never minutes of silence; nothing under --quiet."""

    def __init__(self, quiet: bool, describe=None, tty: bool | None = None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        tty = sys.stderr.isatty() if tty is None else tty
        self.describe = describe or (lambda stage, done, total: stage)
        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=Console(stderr=True, quiet=quiet or not tty),
                            transient=False)
        self.tasks: dict[str, int] = {}
        self.lines = not quiet and not tty
        self.last: tuple[str, str, bool] | None = None
        self.start = time.monotonic()

    def __call__(self, stage: str, done: int, total: int) -> None:
        desc = self.describe(stage, done, total)
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(desc, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total, description=desc)
        if self.lines:
            self._line(stage, desc, done, total)

    def _line(self, stage: str, desc: str, done: int, total: int) -> None:
        """One line when the step changes and when a stage completes (not one per calibration image)."""
        key = (stage, desc, done >= total)
        if key == self.last:
            return
        self.last = key
        elapsed = int(time.monotonic() - self.start)
        click.echo(f"[{elapsed // 60}:{elapsed % 60:02d}] {desc} ({done}/{total})", err=True)


def run_stage(stage: str, done: int, total: int) -> str:
    """The step names of validate and reference: calibration, the source model, then each artifact."""
    return {"calibration": "calibration images", "reference": "source model"}.get(stage, f"running {stage}")
