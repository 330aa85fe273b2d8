"""One rich progress bar on stderr across one or many training runs (folds, seeds, Ray tasks).

    with Progress("train", total_steps) as bar:
        train(..., on_step=bar.tracker("lenet", steps))   # a run trained here fills the bar step by step
        bar.skip("seed1", steps)                          # a saved run reused: its steps leave the total
        bar.advance("seed2", steps)                       # a run that finished elsewhere (a Ray task)

Running loss and accuracy are read back from the device every REFRESH_STEPS steps only, so that a GPU is not
stalled by the bar.
"""

from __future__ import annotations

from collections.abc import Callable

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from mnist_zoo.util import err

REFRESH_STEPS = 25


class Progress:
    """A bar of `total_steps` optimizer steps; `enabled=False` draws nothing (--no-progress, --json)."""

    def __init__(self, description: str, total_steps: int, enabled: bool = True) -> None:
        self.description, self.done, self.enabled = description, 0, enabled
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        times = (TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn())
        stats = TextColumn("{task.fields[stats]}")
        self._bar = RichProgress(*columns, stats, *times, console=err, disable=not enabled)
        self._task = self._bar.add_task(description, total=total_steps, stats="")

    def __enter__(self) -> Progress:
        self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.stop()

    def tracker(self, label: str, steps: int) -> Callable[[dict], None] | None:
        """The on_step callback for train() of a run of `steps` steps (None when the bar is disabled)."""
        base = self.done
        self.done += steps
        if not self.enabled:
            return None
        self._bar.update(self._task, description=f"{self.description} {label}", completed=base)

        def on_step(info: dict) -> None:
            if info["step"] % REFRESH_STEPS and info["step"] != info["total_steps"]:
                return
            loss, acc = info["loss"].item() / info["images"], info["correct"].item() / info["images"]
            rate = info["images_seen"] / max(info["elapsed"], 1e-9)
            stats = f"epoch {info['epoch'] + 1}  loss {loss:.4f}  acc {acc:.2%}  {rate:,.0f} img/s"
            self._bar.update(self._task, completed=base + info["step"], stats=stats)

        return on_step

    def advance(self, label: str, steps: int) -> None:
        """A run of `steps` steps finished elsewhere (a Ray worker reports no steps while it trains): its steps
        join the bar at once."""
        self.done += steps
        self._bar.update(self._task, description=f"{self.description} {label}", completed=self.done)

    def skip(self, label: str, steps: int) -> None:
        """A reused run: its steps leave the total rather than fill the bar, so the time left stays honest."""
        total = self._bar.tasks[0].total - steps
        self._bar.update(self._task, description=f"{self.description} {label} (saved)", total=total)
