"""Progress on stderr for long commands: rich bars on a terminal, one plain line per step off one."""

from __future__ import annotations

import sys
import time

import click


class Bars:
    """Progress on stderr: rich bars on a terminal; off one (CI logs, `2>log`) one plain line per step, so a
    long phase is never minutes of silence; nothing under --quiet."""

    def __init__(self, quiet: bool, describe=None, tty: bool | None = None):
        from rich import progress as rp
        from rich.console import Console

        tty = sys.stderr.isatty() if tty is None else tty
        self.describe = describe or (lambda stage, done, total: stage)
        self.bar = rp.Progress(rp.SpinnerColumn(), rp.TextColumn("{task.description}"), rp.BarColumn(),
                               rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TimeRemainingColumn(),
                               console=Console(stderr=True, quiet=quiet or not tty), transient=False)
        self.tasks: dict[str, int] = {}
        self.lines = not quiet and not tty
        self.last: tuple[str, str, bool] | None = None
        self.start = time.monotonic()
        self.pass_start: float | None = None  # when the current pass over calibration images began

    def __call__(self, stage: str, done: int, total: int, step: str | None = None) -> None:
        desc = self.describe(stage, done, total)
        if step:
            desc = f"{desc}: {step}"  # the step a long stage (a target's conversion) is in
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(desc, total=total)
        self.bar.update(self.tasks[stage], completed=done, total=total, description=desc)
        if self.lines:
            self._line(stage, desc, done, total)

    def _line(self, stage: str, desc: str, done: int, total: int) -> None:
        """One line when the step changes and when a stage completes (not one per calibration image); for a
        quantizer's pass over the calibration images, one per tenth of it with the time left."""
        now = time.monotonic()
        if stage == "quantize":
            self._pass_line(desc, done, total, now)
            return
        key = (stage, desc, done >= total)
        if key == self.last:
            return
        self.last = key
        click.echo(f"[{_clock(now - self.start)}] {desc} ({done}/{total})", err=True)

    def _pass_line(self, desc: str, done: int, total: int, now: float) -> None:
        if done <= 1 or self.pass_start is None:
            self.pass_start = now  # a new pass (a quantizer may run the images more than once)
            self.last = ("quantize", desc, False)
            return
        tenth = max(1, total // 10)
        if done % tenth and done != total:
            return
        left = (now - self.pass_start) / (done - 1) * (total - done)
        click.echo(f"[{_clock(now - self.start)}] {desc}, about {_clock(left)} left in this pass ({done}/{total})",
                   err=True)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


def run_stage(stage: str, done: int, total: int) -> str:
    """The step names of validate and reference: calibration, the source model, then each artifact."""
    return {"calibration": "calibration images", "reference": "source model"}.get(stage, f"running {stage}")
