"""What to tell a person about each group of `i2v status`: a title, what to do, and the
exact command that does it (rerun, or resubmit the ambiguous ones), taken from the runs'
recorded command lines.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Sequence

from i2v.results import RunSummary
from i2v.state import NO_OUTPUT, PURGED
from i2v.status_model import GroupKind

MODERATION_CODE = "1039"
LANDING = "landing"  # the group key of paid videos that did not land


def advice(kind: GroupKind, key: str) -> tuple[str, str]:
    """(title, what to do) of a group."""
    if kind == "ambiguous":
        return (
            "ambiguous: a generate answer was lost, a paid job may exist",
            "look the submit time up in the Atlas Cloud console; if no job was made there "
            "(or you want another anyway), resubmit: it pays again for these inputs",
        )
    if kind == "timed_out":
        return (
            "timed_out: paid, not finished when the run ended; the prediction ids are kept",
            "rerun the same command: it polls these ids and pays nothing",
        )
    if kind == "failed":
        failed = {
            MODERATION_CODE: (
                "failed, error 1039: refused by content moderation",
                "change the picture or the prompt (the same input is never retried)",
            ),
            NO_OUTPUT: (
                "failed, no_output: the provider said done but gave no video",
                "rerun: it polls the same ids again and pays nothing",
            ),
            PURGED: (
                "failed, purged: the provider no longer knows these paid predictions",
                "look the prediction ids up in the Atlas Cloud console (never resubmitted on "
                "our own)",
            ),
            LANDING: (
                "failed, landing: paid and done, but the video did not reach DEST",
                "rerun within 14 days of completion: it lands without paying",
            ),
        }
        if key in failed:
            return failed[key]
        code = f", error {key}" if key else ""
        return (
            f"failed{code}: the provider ended these predictions as failed",
            "read each error; the same input is never retried: change the picture or the "
            "prompt to try again",
        )
    if kind == "not_submitted":
        todo = {
            "budget": "raise --budget-usd (budget_usd) and rerun",
            "balance": "top up the Atlas Cloud balance and rerun",
            "stopped": "rerun the same command to go on",
            "rate_limited": "rerun, with a lower --concurrency if it keeps happening",
            "another_run": "another run was submitting them: rerun once it has ended",
            "key": "fix the key or the block (see the error; `i2v doctor` checks it) and rerun",
            "model": "fix the model option (`i2v doctor` checks it) and rerun",
            "not_processed": "rerun: nothing was paid for them",
        }.get(key, "read the error and rerun")
        return f"not_submitted ({key.replace('_', ' ')}): never paid", todo
    if kind == "rejected":
        return "rejected: the row failed a check", "fix each row (see its error) and rerun"
    return (
        "quality check: landed and paid, but the video looks broken",
        "look at each video; for another one change its prompt or picture (a rerun of the "
        "same input keeps this video and pays nothing)",
    )


class Commands:
    """The exact commands to rerun or resubmit, from the runs' recorded command lines."""

    def __init__(
        self,
        dest: str,
        runs: Sequence[RunSummary],
        summary_of: Callable[[str], RunSummary | None] | None,
    ) -> None:
        self.dest = dest
        self.runs = list(runs)  # newest first
        self.summary_of = summary_of
        self._by_id = {r.run_id: r for r in runs}

    def _summary(self, run_id: str | None) -> RunSummary | None:
        if not run_id:
            return None
        if run_id not in self._by_id and self.summary_of is not None:
            found = self.summary_of(run_id)
            if found is not None:
                self._by_id[run_id] = found
        return self._by_id.get(run_id)

    def _latest(self, wanted: Iterable[str | None] = ()) -> RunSummary | None:
        for run_id in wanted:
            found = self._summary(run_id)
            if found is not None and not found.dry_run:
                return found
        return next((r for r in self.runs if not r.dry_run), None)

    def rerun(self, *, new_budget: bool = False) -> str:
        command = self._command(self._latest(), resubmit=False)
        if not new_budget or not command.startswith("i2v run "):
            return command
        argv = shlex.split(command)
        if "--budget-usd" in argv:  # the old limit is what stopped them
            at = argv.index("--budget-usd")
            del argv[at : at + 2]
        return shlex.join([*argv, "--budget-usd", "NEW_LIMIT"])

    def resubmit(self, owner_runs: Sequence[str | None]) -> str:
        # The run that lost the answer knows the manifest; a kill -9 leaves it no
        # summary, and then the newest run's command is the best guess.
        return self._command(self._latest(dict.fromkeys(owner_runs)), resubmit=True)

    def _command(self, run: RunSummary | None, *, resubmit: bool) -> str:
        if run is not None and run.command:
            argv = [a for a in run.command if a not in ("--resubmit-ambiguous", "--dry-run")]
            return shlex.join(argv + (["--resubmit-ambiguous"] if resubmit else []))
        source = run.source if run is not None else "MANIFEST"
        if run is not None:  # a flow run: no command line; its deployment takes the same
            opts = ', "resubmit_ambiguous": true' if resubmit else ""
            return (
                f"prefect deployment run i2v-batch/batch -p source={shlex.quote(source)} "
                f"-p dest={shlex.quote(self.dest)} --params "
                f"'{{\"options\": {{...the run's options{opts}}}}}'"
            )
        argv = ["i2v", "run", source, "--dest", self.dest, "--config", "FILE"]
        return " ".join(argv + (["--resubmit-ambiguous"] if resubmit else []))
