"""A machine lost in the middle of a fan-out, against a real `prefect server` and process
workers. Destructive (a worker and every flow run it started are SIGKILLed at once, as
when a node is lost), so the module has a server of its own.

1. The worker running shards is lost. The parent notices (its shards stop sending
   heartbeats), marks them Crashed, ends Failed within about three minutes naming them,
   and a rerun of the fan-out, with a worker started in place of the lost one, lands
   every row except those whose generate POST was on the wire at the kill (`ambiguous`:
   at most a shard's concurrency per lost shard). Nothing is paid twice.
2. The worker running the parent is lost. A new run of the fan-out starts new shard runs
   (their idempotency keys hold the parent's id) and finishes, while the lost parent's
   shards on the surviving worker finish too; nothing is paid twice. The shipped
   automations (deployments/automations.yaml) mark the lost parent Crashed, and the
   shard that ran in its process.

Prefect sends a heartbeat at most every 30 s (it refuses a lower
PREFECT_FLOWS_HEARTBEAT_FREQUENCY, and its engine clamps to 30 s), so a loss shows after
about 90 s: this module takes minutes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import pandas as pd
import pytest

from tests.helpers import EXAMPLES
from tests.prefect_stack import Stack, client_for, kill_machine, running_stack, teardown

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(900)]

SHARDS = 4
PER_SHARD = 16
CONCURRENCY = 2  # per shard: the most POSTs a lost shard can leave unanswered
LIMIT = 6  # the provider cap, below the 8 the shards would put in flight together
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
T = TypeVar("T")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A prefect server with the pool, the cap and the deployments; each test starts and
    stops its own workers."""
    home, logs = tmp_path_factory.mktemp("prefect-home"), tmp_path_factory.mktemp("logs")
    with running_stack(home, logs, limit=LIMIT, env={}) as s:
        yield s


def _manifest(folder: Path) -> Path:
    """SHARDS x PER_SHARD rows, each its own input."""
    pictures = ("astronaut.png", "coffee.png", "rocket.jpg")
    for name in pictures:
        shutil.copy(EXAMPLES / name, folder / name)
    path = folder / "manifest.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image", "prompt"])
        for i in range(SHARDS * PER_SHARD):
            writer.writerow([f"r{i:02d}", pictures[i % 3], f"slow push in, take {i}"])
    return path


def _wait(what: str, check: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


class Fanout:
    """Runs of the fan-out deployment on this stack, and their shards."""

    def __init__(self, stack: Stack, client: Any, source: Path, dest: Path, sim: Any) -> None:
        self.stack, self.client = stack, client
        self.parameters = {
            "source": str(source),
            "dest": str(dest),
            "shard_size": PER_SHARD,
            "options": {
                "concurrency": CONCURRENCY,
                "poll_interval_s": 0.2,
                "expected_duration_s": 1.5,
                "timeout_s": 120,
                "global_concurrency_limit": "atlascloud",
                "api": {"base_url": sim.url},
            },
        }

    def start(self) -> UUID:
        dep = self.stack.deployments["i2v-fanout/fanout"]
        run = self.client.create_flow_run_from_deployment(dep.id, parameters=self.parameters)
        return UUID(str(run.id))

    def read(self, run_id: UUID) -> Any:
        return self.client.read_flow_run(run_id)

    def state(self, run_id: UUID) -> str:
        state = self.read(run_id).state
        return state.type.value if state is not None else "NONE"

    def final(self, run_id: UUID, timeout: float) -> Any:
        return _wait(
            f"flow run {run_id} to end",
            lambda: (r := self.read(run_id)) and r.state.type.value in FINAL and r,
            timeout,
        )

    def shards(self, parent: UUID) -> list[Any]:
        """The parent's shard runs: shard 1 in its process, the others on workers."""
        return [r for r in self.children(parent) if "-helps-shard-" not in r.name]

    def helpers(self, parent: UUID) -> list[Any]:
        """The parent's own runs of shards' rows while they waited (flows/helping.py)."""
        return [r for r in self.children(parent) if "-helps-shard-" in r.name]

    def children(self, parent: UUID) -> list[Any]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        flt = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent]))
        return list(self.client.read_flow_runs(flow_run_filter=flt, limit=50))

    def taken_by(self, worker: str, runs: list[Any]) -> list[Any]:
        """The runs `worker` started (its log names each run it submits)."""
        log = self.stack.log_text(worker)
        return [r for r in runs if str(r.id) in log]

    def running_on(self, worker: str, parent: UUID, taken: int) -> list[Any] | None:
        """The worker's running shards of `parent`, once it has started all `taken` of
        its shards (on a loaded machine the first may complete before the last starts)."""
        mine = self.taken_by(worker, self.shards(parent))
        states = [r.state.type.value if r.state is not None else "" for r in mine]
        running = [r for r, s in zip(mine, states, strict=True) if s == "RUNNING"]
        started = all(s in ("RUNNING", "COMPLETED") for s in states)
        return running if len(mine) >= taken and started and running else None

    def all_started(self, parent: UUID, workers: tuple[str, ...]) -> bool:
        """Every shard of `parent` created, each remote one taken by one of `workers` and
        started (which worker polled first is the machine's timing), and the parent
        still running. A shard need not be running still: the parent may have landed
        its rows while it waited for its worker (flows/helping.py), so it only confirms
        them, in seconds."""
        runs = self.shards(parent)
        remote = [r for r in runs if r.deployment_id is not None]
        taken = [r for name in workers for r in self.taken_by(name, remote)]
        states = {r.state.type.value if r.state is not None else "" for r in remote}
        return (
            len(runs) == SHARDS
            and len(taken) == len(remote)
            and states <= {"RUNNING", "COMPLETED"}
            and self.state(parent) == "RUNNING"
        )


def _last_beat_before(client: Any, run_id: UUID, killed_wall: float) -> float | None:
    """How many seconds before the kill the run's last heartbeat was sent."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    flt = EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
    )
    events = client.read_events(filter=flt, limit=1).events
    return killed_wall - events[0].occurred.timestamp() if events else None


def _landed_videos(dest: Path, runs: list[Any]) -> int:
    """Videos in DEST of the rows of `runs` (shards): row rNN is manifest line NN + 2."""
    lines = [n for r in runs for n in r.parameters["lines"]]
    return sum((dest / f"videos/r{n - 2:02d}.mp4").exists() for n in lines)


def _records(dest: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in (dest / "_state").glob("*.json")}


def _not_landed(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] != "landed"]


@contextlib.contextmanager
def _fanout(
    stack: Stack, make_simulator: Any, tmp_path: Path
) -> Iterator[tuple[Fanout, Any, Any, Path]]:
    """A fan-out of the test manifest against a slow simulator, its client, and DEST."""
    sim = make_simulator(latency_s=1.5, latency_jitter_s=0.5, generate_delay_s=0.3)
    # The form names the simulator as api.base_url: the workers must allow it.
    stack.env["I2V_ALLOWED_BASE_URLS"] = sim.url
    dest = tmp_path / "dest"
    with client_for(stack.url) as client:
        yield Fanout(stack, client, _manifest(tmp_path), dest, sim), client, sim, dest


@pytest.fixture
def workers(stack: Stack) -> Iterator[Callable[[str, int], Any]]:
    """Start workers for one test; whatever is left of them is stopped after it."""
    started: list[Any] = []

    def start(name: str, limit: int) -> Any:
        proc = stack.worker(name, limit)
        started.append(proc)
        return proc

    yield start
    teardown(started)


def test_a_lost_worker_fails_the_fanout_in_minutes_and_a_rerun_finishes_it(
    stack: Stack, workers: Callable[[str, int], Any], make_simulator: Any, tmp_path: Path
) -> None:
    rows = SHARDS * PER_SHARD
    with _fanout(stack, make_simulator, tmp_path) as (fan, client, sim, dest):
        workers("keeper", 1)  # the parent, with shard 1 in its process: it survives
        first = fan.start()
        _wait("the parent to run", lambda: fan.state(first) == "RUNNING", 180)
        victim = workers("victim", 3)
        # Killed once its shards have landed a few rows and have more on the wire.
        lost = _wait(
            "the victim's shards to land rows",
            lambda: (
                (mine := fan.running_on("victim", first, 3))
                and _landed_videos(dest, mine) >= 3
                and mine
            ),
            240,
            every=0.5,
        )
        kill_machine(victim)
        killed, killed_wall = time.monotonic(), time.time()
        jobs_at_kill = sim.stats.jobs_created

        # The parent notices by itself, marks the lost shards, and ends Failed.
        parent = fan.final(first, timeout=240)
        detected_s = time.monotonic() - killed
        message = parent.state.message or ""
        assert parent.state.type.value == "FAILED", parent.state
        assert detected_s < 180, f"the parent took {detected_s:.0f} s to end after the loss"
        for run in lost:
            assert run.name in message, message
        assert "no heartbeat" in message and "Run the fan-out again" in message, message
        shards = {r.id: r for r in fan.shards(first)}
        assert len(shards) == SHARDS
        lost_ids = {r.id for r in lost}
        for run_id, run in shards.items():
            if run_id in lost_ids:
                assert run.state.type.value == "CRASHED", run.state
                assert "no heartbeat" in (run.state.message or ""), run.state.message
            else:
                assert run.state.type.value == "COMPLETED", run.state
        lost_lines = {n: r.name for r in lost for n in r.parameters["lines"]}
        beats = [_last_beat_before(client, r.id, killed_wall) for r in lost]

        # The merged table: the lost shards' rows are landed where their records say so,
        # the others say which shard ended how and what to do.
        table = pd.read_parquet(dest / "results.parquet")
        assert len(table) == rows
        records = _records(dest)
        landed_before = 0
        for row in table.itertuples():
            if row.line not in lost_lines:
                assert row.status == "landed", row
                continue
            record = records.get(row.input_identity, {})
            landed = record.get("phase") == "landed" and (dest / f"videos/{row.id}.mp4").exists()
            assert (row.status == "landed") == landed, (row, record.get("phase"))
            if landed:
                landed_before += 1
            else:
                assert row.status == "not_submitted", row
                assert lost_lines[row.line] in row.error and "Run the fan-out again" in row.error

        # Run it again, a worker started in place of the lost one: everything lands but
        # the rows whose POST was on the wire when the machine died.
        workers("victim-2", 3)
        again = fan.start()
        rerun = fan.final(again, timeout=300)
        assert rerun.state.type.value == "COMPLETED", rerun.state
        new_shards = fan.shards(again)
        assert len(new_shards) == SHARDS and not {r.id for r in new_shards} & set(shards)
        gcl = client.read_global_concurrency_limit_by_name("atlascloud")

    table = pd.read_parquet(dest / "results.parquet")
    assert len(table) == rows and table["id"].is_unique
    left = _not_landed(table)
    assert set(left["status"]) <= {"ambiguous"}, left[["id", "status", "error"]]
    assert set(left["line"]) <= set(lost_lines), "only a lost shard's rows can be ambiguous"
    per_shard = left["line"].map(lost_lines).value_counts()
    assert (per_shard <= CONCURRENCY).all(), per_shard
    assert sorted(p.stem for p in (dest / "videos").glob("*.mp4")) == sorted(
        table.loc[table["status"] == "landed", "id"]
    )
    # Nothing paid twice; every input paid once, but an ambiguous one whose POST never
    # reached the provider.
    assert set(sim.stats.submissions_per_input.values()) == {1}, "an input was paid twice"
    assert rows - len(left) <= sim.stats.jobs_created <= rows
    assert gcl.active_slots == 0, "the lost shards' provider slots never came back"
    assert landed_before >= 1, "the rows the lost shards landed must show landed"
    print(
        f"lost worker: {len(lost)} shards lost ({jobs_at_kill} jobs created at the kill, "
        f"{landed_before} of their rows landed before it; their last heartbeats "
        f"{', '.join(f'{b:.0f}' for b in beats if b is not None)} s before it); the parent "
        f"ended Failed {detected_s:.0f} s after the kill; the rerun landed "
        f"{rows - len(left)} of {rows}, {len(left)} ambiguous"
    )


def test_a_lost_parent_is_replaced_by_a_new_fanout_run_without_paying_twice(
    stack: Stack, workers: Callable[[str, int], Any], make_simulator: Any, tmp_path: Path
) -> None:
    # The shipped automation, for what no fan-out watches: here, the lost parent itself.
    stack.cli("automation", "create", "--from-file", "deployments/automations.yaml")
    rows = SHARDS * PER_SHARD
    with _fanout(stack, make_simulator, tmp_path) as (fan, client, sim, dest):
        # The parent (with shard 1 in its process) and one more shard: lost together.
        host = workers("parent-host", 2)
        first = fan.start()
        _wait("the parent to run", lambda: fan.state(first) == "RUNNING", 180)
        workers("survivor", 3)
        _wait(
            "every shard started, the parent still running",
            lambda: (
                sim.stats.jobs_created >= 10 and fan.all_started(first, ("parent-host", "survivor"))
            ),
            240,
            every=0.5,
        )
        old = {r.id: r for r in fan.shards(first)}
        here = [r for r in old.values() if r.deployment_id is None]  # in the parent
        # The parent's runs of waiting shards' rows died with it: their lines may hold a
        # POST that was on the wire.
        lost = fan.taken_by("parent-host", list(old.values())) + here + fan.helpers(first)
        (shard_here,) = here
        kill_machine(host)
        killed, killed_wall = time.monotonic(), time.time()
        # Read after the kill: a dead process changes no state, and the automation
        # needs 90 s of silence (read before, a shard ending in between raced it).
        here_at_kill = fan.state(shard_here.id)

        workers("parent-host-2", 3)
        again = fan.start()
        rerun = fan.final(again, timeout=300)
        assert rerun.state.type.value == "COMPLETED", rerun.state
        new_shards = fan.shards(again)
        assert len(new_shards) == SHARDS and not {r.id for r in new_shards} & set(old)
        # The lost parent's shards on the surviving worker ran to the end meanwhile.
        lost_ids = {r.id for r in lost}
        for run_id in old:
            if run_id not in lost_ids:
                assert fan.final(run_id, timeout=60).state.type.value == "COMPLETED"
        # ... and the automations mark the lost parent and the shard in its process (if
        # it had not finished yet) Crashed: nothing shows them running.
        left_s = max(30.0, 180 - (time.monotonic() - killed))
        here_end = fan.final(shard_here.id, timeout=left_s).state.type.value
        assert here_end == ("CRASHED" if here_at_kill == "RUNNING" else here_at_kill)
        gone = fan.final(first, timeout=max(30.0, 180 - (time.monotonic() - killed)))
        crashed_s = time.monotonic() - killed
        beat = _last_beat_before(client, first, killed_wall)
        assert gone.state.type.value == "CRASHED", gone.state
        assert "no heartbeat" in (gone.state.message or ""), gone.state.message

    lost_lines = {n for r in lost for n in r.parameters["lines"]}
    table = pd.read_parquet(dest / "results.parquet")
    assert len(table) == rows and table["id"].is_unique
    left = _not_landed(table)
    assert set(left["status"]) <= {"ambiguous"}, left[["id", "status", "error"]]
    assert set(left["line"]) <= lost_lines and len(left) <= CONCURRENCY * len(lost)
    assert set(sim.stats.submissions_per_input.values()) == {1}, "an input was paid twice"
    assert rows - len(left) <= sim.stats.jobs_created <= rows
    print(
        f"lost parent: the new run landed {rows - len(left)} of {rows} ({len(left)} "
        f"ambiguous); the automation marked the lost parent Crashed {crashed_s:.0f} s "
        f"after the kill (its last heartbeat {beat or 0:.0f} s before it)"
    )
