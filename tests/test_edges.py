"""The real world's edges, end to end: two runs on one DEST, untidy answers, Cloudflare,
an empty balance under another status, a purged prediction, stop signals, prices.

Real HTTP against the simulator (a knob per fault), moto S3, Prefect's real engine;
each test also checks the money rules: nothing paid twice, nothing lost.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from i2v.dest import open_storage
from i2v.state import StateStore
from tests.helpers import (
    assert_money_rules,
    cli_run,
    options_for,
    run_batch,
    sim_config,
    start_cli,
    state_phases,
    state_records,
    subprocess_env,
    table,
    write_manifest,
)

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(240)]


async def until(cond: Any, timeout_s: float = 60.0) -> None:
    """Wait (polling, bounded) until `cond()` holds."""
    for _ in range(int(timeout_s / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out waiting")


def rows(n: int, image: str = "coffee.png", **extra: Any) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "image": image, "prompt": f"pan left {i}", **extra} for i in range(n)]


# ------------------------------------------------------------- two runs on one DEST


async def _two_runs(manifest: Path, dest: str, options: Any) -> tuple[Any, Any]:
    from flows.batch import i2v_batch

    first, second = await asyncio.gather(
        i2v_batch(str(manifest), dest, options), i2v_batch(str(manifest), dest, options)
    )
    return first, second


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_two_runs_at_once_on_one_dest_pay_once(
    make_simulator: Any, pictures: Path, tmp_path: Path, where: str, request: Any
) -> None:
    """The same 12-row manifest started twice at once into the same DEST: 12 jobs, and
    both runs' tables say every row landed."""
    sim = make_simulator(latency_s=0.5)
    manifest = write_manifest(pictures, rows(12))
    if where == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        dest = f"s3://{bucket}/shared"
    else:
        dest = str(tmp_path / "out")
    first, second = asyncio.run(_two_runs(manifest, dest, options_for(sim, concurrency=6)))
    assert sim.stats.jobs_created == 12, sim.stats.submissions_per_input
    assert max(sim.stats.submissions_per_input.values()) == 1
    assert first.submissions + second.submissions == 12
    assert first.spent_usd + second.spent_usd == pytest.approx(12 * 0.28)
    for summary in (first, second):
        assert summary.counts["landed"] == 12, summary
        assert summary.exit_code == 0
    if where == "folder":
        assert_money_rules(sim, Path(dest))


def test_a_run_that_finds_a_live_claim_follows_it(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """Run B starts while run A's POST waits for its answer: B pays nothing, waits for
    A's prediction id, then polls and lands the same prediction."""
    sim = make_simulator(latency_s=0.3, generate_delay_s=1.5)
    manifest = write_manifest(pictures, rows(1))
    dest = tmp_path / "out"

    async def staggered() -> tuple[Any, Any]:
        from flows.batch import i2v_batch

        opts = options_for(sim)
        a = asyncio.ensure_future(i2v_batch(str(manifest), str(dest), opts))
        await until(lambda: state_phases(dest) == ["submitting"])
        b = await i2v_batch(str(manifest), str(dest), opts)
        return await a, b

    first, second = asyncio.run(staggered())
    assert sim.stats.jobs_created == 1 and sim.stats.generate_posts == 1
    assert first.submissions == 1 and second.submissions == 0
    assert second.counts["landed"] == 1 and second.spent_usd == 0.0
    assert_money_rules(sim, dest)


# ----------------------------------------------------------------- untidy answers


def test_html_answer_to_a_poll_is_retried_and_the_row_lands(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    sim = make_simulator(latency_s=0.3, html_poll_answers=2)
    dest = tmp_path / "out"
    summary = run_batch(write_manifest(pictures, rows(3)), dest, options_for(sim))
    assert summary.counts["landed"] == 3, table(dest)["error"].tolist()
    assert sim.stats.polls >= 3 * 3, "each row saw two HTML pages before its JSON"
    assert_money_rules(sim, dest)


def test_completed_without_output_fails_with_a_message_and_is_polled_again(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    sim = make_simulator(latency_s=0.2, completed_without_output_rate=1.0)
    manifest = write_manifest(pictures, rows(1))
    dest = tmp_path / "out"
    first = run_batch(manifest, dest, options_for(sim))
    row = table(dest).iloc[0]
    assert row["status"] == "failed" and "without an output" in row["error"], row["error"]
    assert row["prediction_id"] and first.exit_code == 1

    jobs = sim.simulator.jobs  # the provider lists the output later
    for pid, job in list(jobs.items()):
        jobs[pid] = dataclasses.replace(job, no_output=False)
    polls = sim.stats.polls
    second = run_batch(manifest, dest, options_for(sim))
    assert second.exit_code == 0 and table(dest).iloc[0]["status"] == "landed"
    assert table(dest).iloc[0]["prediction_id"] == row["prediction_id"]
    assert sim.stats.jobs_created == 1 and sim.stats.polls > polls, "polled, not paid again"


def test_a_purged_prediction_is_reported_and_never_resubmitted(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    sim = make_simulator(latency_s=30.0)
    manifest = write_manifest(pictures, rows(1))
    dest = tmp_path / "out"
    first = run_batch(manifest, dest, options_for(sim, timeout_s=0.5))
    assert first.counts["timed_out"] == 1
    # Days later: the provider has purged it (its retention), long past the first
    # seconds in which a new prediction may not be visible yet.
    sim.config.retention_s = 0.0
    store = StateStore(open_storage(dest))
    (only,) = [r for r in (store.get(p.stem) for p in (dest / "_state").glob("*.json")) if r]
    store.put(only.model_copy(update={"submitted_at": "2026-11-20T00:00:00.000Z"}))
    second = run_batch(manifest, dest, options_for(sim, timeout_s=5))
    row = table(dest).iloc[0]
    assert row["status"] == "failed" and "purged" in row["error"], row["error"]
    assert "never" not in row["error"]
    third = run_batch(manifest, dest, options_for(sim, timeout_s=5))
    assert third.submissions == 0 and second.submissions == 0
    assert sim.stats.jobs_created == 1


def test_statuses_the_provider_may_use_are_classified(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    sim = make_simulator(
        latency_s=0.3, status_aliases={"processing": "starting", "completed": "succeeded"}
    )
    dest = tmp_path / "out"
    summary = run_batch(write_manifest(pictures, rows(2)), dest, options_for(sim))
    assert summary.counts["landed"] == 2
    sim.config.status_aliases = {"failed": "cancelled"}
    failed = run_batch(
        write_manifest(pictures, [{"id": "x", "image": "coffee.png", "prompt": "nsfw"}], "m2.csv"),
        tmp_path / "out2",
        options_for(sim),
    )
    assert failed.counts["failed"] == 1


# ----------------------------------------------------------- first contact, balance


def test_cloudflare_block_page_exits_2_names_the_user_agent_and_pays_nothing(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    sim = make_simulator(latency_s=0.2, blocked_user_agents=("i2v-pipeline",))
    manifest = write_manifest(pictures, rows(2))
    config = sim_config(tmp_path, sim)
    blocked = cli_run(manifest, tmp_path / "out", config)
    assert blocked.exit_code == 2, blocked.output
    assert "Cloudflare" in blocked.output and "User-Agent" in blocked.output
    assert "i2v-pipeline/" in blocked.output and "ATLASCLOUD_USER_AGENT" in blocked.output
    assert "API key" not in blocked.output.split("Cloudflare")[0]
    assert sim.stats.generate_posts == 0

    other = tmp_path / "ua.yaml"
    other.write_text(config.read_text() + '  user_agent: "Mozilla/5.0 (X11; Linux x86_64)"\n')
    passed = cli_run(manifest, tmp_path / "out", other)
    assert passed.exit_code == 0, passed.output
    assert sim.stats.jobs_created == 2


def test_empty_balance_as_a_400_is_not_submitted_and_resumable(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    sim = make_simulator(latency_s=0.2, balance_jobs=1, balance_status=400)
    manifest = write_manifest(pictures, rows(3))
    dest = tmp_path / "out"
    first = run_batch(manifest, dest, options_for(sim, concurrency=1))
    statuses = list(table(dest)["status"])
    assert statuses.count("landed") == 1 and statuses.count("not_submitted") == 2, statuses
    assert "rejected" not in statuses and first.stop_reason == "balance"
    sim.config.balance_jobs = None
    second = run_batch(manifest, dest, options_for(sim))
    assert second.exit_code == 0 and sim.stats.jobs_created == 3
    assert_money_rules(sim, dest)


# ------------------------------------------------------------------------ stopping


def _wait_for(cond: Any, proc: Any, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert proc.poll() is None, f"the CLI ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_keeps_every_id_writes_the_table_and_exits_128_plus_n(
    make_simulator: Any, pictures: Path, tmp_path: Path, signum: int
) -> None:
    """Stopped while 3 POSTs wait for their answers (3 more rows queue for a slot):
    the POSTs get their answers (no row ambiguous), every id is recorded, the queued rows
    are not submitted, the table is written, the exit code is 128 + the signal, within
    20 s; a rerun lands everything without paying twice."""
    sim = make_simulator(latency_s=60.0, generate_delay_s=3.0)
    manifest = write_manifest(pictures, rows(6))
    dest = tmp_path / "out"
    config = sim_config(tmp_path, sim, concurrency=3)
    args = ["run", str(manifest), "--dest", str(dest), "--config", str(config)]
    env = subprocess_env(tmp_path, os.environ["ATLASCLOUD_API_KEY"])
    proc = start_cli(args, env, merge_stderr=True)
    _wait_for(lambda: sim.stats.jobs_created >= 3, proc, "three POSTs on the wire")
    stopped_at = time.monotonic()
    os.killpg(proc.pid, signum)
    output = proc.communicate(timeout=60)[0].decode()
    took = time.monotonic() - stopped_at
    assert proc.returncode == 128 + signum, output
    assert took < 20, f"took {took:.1f} s to stop"
    frame = pd.read_parquet(dest / "results.parquet")
    assert "ambiguous" not in set(frame["status"]), frame[["status", "error"]]
    paid = frame[frame["prediction_id"].notna()]
    assert set(paid["status"]) == {"timed_out"}, frame[["id", "status", "error"]].to_string()
    assert len(paid) == sim.stats.jobs_created == 3
    assert list(frame["status"]).count("not_submitted") == 3
    assert all(r["phase"] != "submitting" for r in state_records(dest))
    assert "stopped by" in output

    sim.config.generate_delay_s = 0.0
    sim.config.latency_s = 0.2
    jobs = sim.simulator.jobs  # the provider finished the paid ones meanwhile
    for pid, job in list(jobs.items()):
        jobs[pid] = dataclasses.replace(job, latency_s=0.1)
    again = cli_run(manifest, dest, config)
    assert again.exit_code == 0, again.output
    assert sim.stats.jobs_created == 6
    assert max(sim.stats.submissions_per_input.values()) == 1
    assert_money_rules(sim, dest)


def test_a_cancelled_flow_run_does_the_same_bookkeeping(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """The flow's cancellation path (a worker cancelling a deployment run): every id
    recorded, the table written, then the cancellation goes on."""
    sim = make_simulator(latency_s=60.0)
    manifest = write_manifest(pictures, rows(3))
    dest = tmp_path / "out"

    async def cancel_once_submitted() -> None:
        from flows.batch import i2v_batch

        run = asyncio.ensure_future(i2v_batch(str(manifest), str(dest), options_for(sim)))
        await until(lambda: state_phases(dest).count("submitted") == 3)
        run.cancel()
        with pytest.raises(BaseException):  # noqa: B017 - Prefect may wrap the cancellation
            await run

    asyncio.run(cancel_once_submitted())
    frame = table(dest)
    assert set(frame["status"]) == {"timed_out"} and frame["prediction_id"].notna().all()
    assert sim.stats.jobs_created == 3


# -------------------------------------------------------------------------- prices


def test_dry_run_prices_10_s_clips_at_twice_the_6_s_price(
    make_simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    from cli.main import app  # noqa: F401  (the CLI prints the estimate)
    from i2v.config import load_options

    sim = make_simulator(latency_s=0.2)
    production = load_options(Path(__file__).resolve().parent.parent / "configs/atlascloud.yaml")
    mixed = rows(5, duration=6) + [
        {"id": f"t{i}", "image": "coffee.png", "prompt": f"zoom {i}", "duration": 10}
        for i in range(5)
    ]
    options = options_for(sim, dry_run=True, prices_usd=production.prices_usd)
    summary = run_batch(write_manifest(pictures, mixed), tmp_path / "out", options)
    assert summary.estimated_usd == pytest.approx(5 * 0.28 + 5 * 0.56)
    assert sim.stats.generate_posts == 0


def test_a_higher_catalog_price_is_what_the_budget_counts(
    make_simulator: Any, pictures: Path, tmp_path: Path, caplog: Any
) -> None:
    sim = make_simulator(latency_s=0.2, catalog_prices={"minimax/hailuo-2.3/i2v-standard": 0.50})
    dest = tmp_path / "out"
    summary = run_batch(
        write_manifest(pictures, rows(4)), dest, options_for(sim, budget_usd=1.0, concurrency=1)
    )
    assert summary.submissions == 2 and summary.spent_usd == pytest.approx(1.0)
    assert summary.counts["not_submitted"] == 2
    assert "catalog says $0.50" in caplog.text and "configured $0.28" in caplog.text


# ------------------------------------------------------------------------ landing


def test_an_expired_output_url_fails_the_row_with_a_message_and_pays_nothing_more(
    make_simulator: Any, pictures: Path, tmp_path: Path, fast_land_retries: None
) -> None:
    sim = make_simulator(latency_s=0.2, outputs_expired=True)
    dest = tmp_path / "out"
    summary = run_batch(write_manifest(pictures, rows(1)), dest, options_for(sim))
    row = table(dest).iloc[0]
    assert row["status"] == "failed" and "landing failed" in row["error"], row["error"]
    assert "HTTP 403" in row["error"] and "without paying again" in row["error"]
    assert summary.exit_code == 1 and sim.stats.jobs_created == 1
    assert_money_rules(sim, dest)


@pytest.mark.parametrize("knob", ["outputs_as_string", "top_level_id"])
def test_the_alternative_envelopes_land(
    make_simulator: Any, pictures: Path, tmp_path: Path, knob: str
) -> None:
    sim = make_simulator(latency_s=0.2, **{knob: True})
    dest = tmp_path / "out"
    summary = run_batch(write_manifest(pictures, rows(2)), dest, options_for(sim))
    assert summary.counts["landed"] == 2, table(dest)["error"].tolist()
    assert_money_rules(sim, dest)


@pytest.fixture
def fast_land_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks import land as land_module

    monkeypatch.setattr(land_module, "LAND_RETRY_DELAYS_S", (0.05, 0.05))
