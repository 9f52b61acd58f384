"""The CLI's progress bar: the run's phase, rows done out of rows read, what is in
flight, and the spend (marked simulated against the simulator)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from i2v.run import Job, JobOutcome


class RunProgress:
    """Follows one run through `i2v.run.RunControl`'s listeners and phases."""

    def __init__(self, console: Console, *, total: int | None, simulated: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]i2v[/bold] {task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        )
        self.simulated = simulated
        self.counts: Counter[str] = Counter()
        self.in_flight: set[str] = set()
        self.spent_usd = 0.0
        self.bar = self.progress.add_task("starting Prefect", total=total, detail="")

    @property
    def total(self) -> float | None:
        return self.progress.tasks[0].total

    @property
    def completed(self) -> float:
        return self.progress.tasks[0].completed

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The bar off the terminal while the user is asked something (its redraws
        would overwrite the question)."""
        self.progress.stop()
        try:
            yield
        finally:
            self.progress.start()

    def phase(self, name: str, counts: dict[str, int]) -> None:
        if name == "rows checked":
            self.progress.update(self.bar, total=counts.get("rows", self.total))
            rejected = counts.get("rejected", 0)
            if rejected:
                self.counts["rejected"] += rejected
                self.progress.advance(self.bar, rejected)
            name = f"{counts.get('inputs', 0)} inputs"
        self.progress.update(self.bar, description=name)
        self._show()

    def listener(self, event: str, job: Job, outcome: JobOutcome | None) -> None:
        if event == "submitted":
            self.in_flight.add(job.identity)
        elif event == "outcome" and outcome is not None:
            self.in_flight.discard(job.identity)
            self.spent_usd += outcome.paid_usd
            self.counts[str(outcome.status)] += len(job.rows)
            self.progress.advance(self.bar, len(job.rows))
        self._show()

    def _show(self) -> None:
        done = " ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        spend = f"${self.spent_usd:.2f}" + (" simulated" if self.simulated else "")
        detail = f"{done}  in flight {len(self.in_flight)}  {spend}".strip()
        self.progress.update(self.bar, detail=detail)
