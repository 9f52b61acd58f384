"""AtlasClient against the Atlas simulator over real HTTP on loopback (no mocks)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from i2v._constants import DEFAULT_BASE_URL, DEFAULT_USER_AGENT
from i2v.client import AtlasClient
from i2v.errors import (
    AmbiguousSubmissionError,
    AtlasError,
    AuthError,
    BadRequestError,
    BlockedError,
    ConfigError,
    InsufficientBalanceError,
    ModelNotFoundError,
    NotFoundError,
    OutputError,
    PredictionFailedError,
    PredictionNotFoundError,
    PredictionTimeoutError,
    RateLimitedError,
)
from i2v.media import check_mp4_file, video_facts
from i2v.models import DEFAULT_MODEL
from i2v.parsing import parse_prediction, parse_upload
from i2v.polling import FIRST_POLL_FACTOR, FIRST_POLL_SLACK_S, DurationEstimator, PollSchedule
from i2v.retry import RetryPolicy
from i2v.session import Timeouts
from i2v.sync_client import SyncAtlasClient
from i2v.types import Prediction, PredictionStatus
from tests.helpers import EXAMPLES, TEST_API_KEY

FAST_RETRY = RetryPolicy(max_attempts=5, base_delay_s=0.01, max_delay_s=0.05)
PICTURE = (EXAMPLES / "coffee.png").read_bytes()


def fast_schedule(estimator: DurationEstimator | None = None) -> PollSchedule:
    return PollSchedule(
        estimator or DurationEstimator(initial_s=0.3),
        min_interval_s=0.02,
        max_interval_s=0.5,
        not_visible_grace_s=10.0,
    )


def make_client(sim: Any, **kwargs: Any) -> AtlasClient:
    kwargs.setdefault("retry", FAST_RETRY)
    return AtlasClient(base_url=sim.url, **kwargs)


async def submit(client: AtlasClient, prompt: str = "slow pan left", **extra: Any) -> Prediction:
    uploaded = await client.upload_media(PICTURE, filename="coffee.png", content_type="image/png")
    return await client.generate_video(
        DEFAULT_MODEL, {"image": uploaded.download_url, "prompt": prompt, **extra}
    )


def total_requests(sim: Any) -> int:
    return sum(sim.stats.responses_by_status.values())


# ------------------------------------------------------------------- happy path


async def test_upload_generate_wait_download(simulator: Any, tmp_path: Path) -> None:
    seen: list[PredictionStatus] = []
    schedule = fast_schedule()
    async with AtlasClient(retry=FAST_RETRY) as client:  # key and URL from the environment
        assert client.base_url == simulator.url
        uploaded = await client.upload_media(
            PICTURE, filename="coffee.png", content_type="image/png"
        )
        assert uploaded.size == len(PICTURE) and uploaded.download_url.startswith("http")
        submitted_at = time.monotonic()
        prediction = await client.generate_video(
            DEFAULT_MODEL, {"image": uploaded.download_url, "prompt": "zoom in", "duration": 6}
        )
        assert prediction.status is PredictionStatus.RUNNING and prediction.request_id
        done = await client.wait_for_prediction(
            prediction.id,
            deadline_s=20,
            schedule=schedule,
            submitted_monotonic=submitted_at,
            on_poll=lambda p: seen.append(p.status),
        )
        assert done.status is PredictionStatus.SUCCEEDED
        assert done.id == prediction.id and done.output_url
        assert len(seen) >= 1 and seen[-1] is PredictionStatus.SUCCEEDED
        assert simulator.stats.polls == len(seen)  # every poll sent was seen, none hidden
        assert done.predict_time_s == pytest.approx(0.3, abs=0.01)
        # The estimator learned the job's duration for the next rows.
        assert schedule.estimator.count == 1
        assert schedule.estimator.typical() == pytest.approx(0.3, abs=0.05)

        target = tmp_path / "out.mp4"
        with target.open("wb") as sink:
            result = await client.download_output(done.output_url, sink)
    assert result.bytes == check_mp4_file(target) == target.stat().st_size
    assert result.sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    facts = video_facts(target)
    assert facts.frames > 0 and facts.width > 0
    assert simulator.stats.jobs_created == 1 and simulator.stats.uploads == 1


@pytest.mark.parametrize("knob", ["top_level_id", "outputs_as_string"])
async def test_both_answer_envelopes(make_simulator: Callable[..., Any], knob: str) -> None:
    sim = make_simulator(latency_s=0.2, **{knob: True})
    async with make_client(sim) as client:
        prediction = await submit(client)
        assert len(prediction.id) == 32
        done = await client.wait_for_prediction(
            prediction.id, deadline_s=20, schedule=fast_schedule()
        )
        assert done.outputs == (f"{sim.url}/_sim/outputs/{prediction.id}.mp4",)
        sink = io.BytesIO()
        assert (await client.download_output(done.outputs[0], sink)).bytes > 0


async def test_sync_client_runs_the_same_calls(simulator: Any, tmp_path: Path) -> None:
    with SyncAtlasClient(retry=FAST_RETRY) as client:
        assert DEFAULT_MODEL in client.list_models()
        client.check_model(DEFAULT_MODEL)
        uploaded = client.upload_media(PICTURE, filename="c.png", content_type="image/png")
        prediction = client.generate_video(DEFAULT_MODEL, {"image": uploaded.download_url})
        done = client.wait_for_prediction(prediction.id, deadline_s=20, schedule=fast_schedule())
        assert done.output_url
        with (tmp_path / "v.mp4").open("wb") as sink:
            assert client.download_output(done.output_url, sink).bytes > 0
    with pytest.raises(RuntimeError, match="closed"):
        client.list_models()


# ------------------------------------------------------------- configuration


async def test_missing_key_is_a_config_error_before_any_request(
    simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ATLASCLOUD_API_KEY")
    with pytest.raises(ConfigError, match="ATLASCLOUD_API_KEY is not set"):
        AtlasClient()
    with pytest.raises(ConfigError, match="ATLASCLOUD_API_KEY is not set"):
        SyncAtlasClient()
    monkeypatch.setenv("ATLASCLOUD_API_KEY", "   ")
    with pytest.raises(ConfigError):
        AtlasClient()
    await asyncio.sleep(0.05)
    assert total_requests(simulator) == 0
    assert simulator.stats.generate_posts == 0 and simulator.stats.polls == 0


def test_base_url_from_argument_env_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AtlasClient("k", "http://example.test:1/").base_url == "http://example.test:1"
    monkeypatch.setenv("ATLASCLOUD_BASE_URL", "http://other.test:2")
    assert AtlasClient("k").base_url == "http://other.test:2"
    monkeypatch.delenv("ATLASCLOUD_BASE_URL")
    assert AtlasClient("k").base_url == DEFAULT_BASE_URL
    with pytest.raises(ConfigError, match="not an absolute"):
        AtlasClient("k", "api.atlascloud.ai")


def test_user_agent_is_a_config_option() -> None:
    from i2v.config import ApiSettings, load_options

    field = ApiSettings.model_fields["user_agent"]
    assert field.title == "User-Agent" and field.description
    assert "ATLASCLOUD_USER_AGENT" in field.description
    assert load_options().api.user_agent is None  # the client's default applies
    chosen = load_options(api={"user_agent": "Mozilla/5.0 (studio)"}).api.user_agent
    assert AtlasClient("k", user_agent=chosen).user_agent == "Mozilla/5.0 (studio)"
    with pytest.raises(ConfigError, match="user_agent"):
        load_options(api={"user_agent": "two\nlines"})


# ------------------------------------------------------------ error answers


async def test_wrong_key_is_an_auth_error_naming_the_env_var(
    make_simulator: Callable[..., Any],
) -> None:
    sim = make_simulator(api_key="sk-the-right-one")
    async with make_client(sim) as client:
        with pytest.raises(AuthError) as err:
            await client.upload_media(PICTURE, filename="c.png", content_type="image/png")
    assert err.value.status_code == 401
    assert err.value.request_id and len(err.value.request_id) == 32
    assert "ATLASCLOUD_API_KEY" in str(err.value)
    assert "invalid API key" in str(err.value)  # the server's own msg
    assert sim.stats.responses_by_status == {401: 1}  # not retried


async def test_balance_runs_out_with_402(make_simulator: Callable[..., Any]) -> None:
    sim = make_simulator(latency_s=0.2, balance_jobs=1)
    async with make_client(sim) as client:
        await submit(client)
        with pytest.raises(InsufficientBalanceError) as err:
            await submit(client)
    assert err.value.status_code == 402 and err.value.request_id
    assert sim.stats.jobs_created == 1 and sim.stats.generate_posts == 2


async def test_balance_message_on_a_400_is_a_balance_error(
    make_simulator: Callable[..., Any],
) -> None:
    sim = make_simulator(latency_s=0.2, balance_jobs=0, balance_status=400)
    async with make_client(sim) as client:
        with pytest.raises(InsufficientBalanceError) as err:
            await submit(client)
    assert err.value.status_code == 400 and "insufficient balance" in str(err.value)
    assert sim.stats.generate_posts == 1 and sim.stats.jobs_created == 0  # not retried


async def test_cloudflare_block_names_the_user_agent_and_how_to_change_it(
    make_simulator: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = make_simulator(latency_s=0.1, blocked_user_agents=("i2v-pipeline/",))
    async with make_client(sim) as client:
        assert client.user_agent == DEFAULT_USER_AGENT
        with pytest.raises(BlockedError) as err:
            await client.upload_media(PICTURE, filename="c.png", content_type="image/png")
        with pytest.raises(BlockedError):
            await client.check_model(DEFAULT_MODEL)  # not silent: nothing would work
    assert not isinstance(err.value, AuthError) and err.value.status_code == 403
    text = str(err.value)
    assert "blocked by Cloudflare" in text and "error code 1010" in text
    assert "not a bad API key" in text and repr(DEFAULT_USER_AGENT) in text
    assert "ATLASCLOUD_USER_AGENT" in text and "api.user_agent" in text
    assert sim.stats.responses_by_status == {403: 2}  # not retried
    # Another User-Agent, from the argument or the environment, gets through.
    async with make_client(sim, user_agent="Mozilla/5.0 (compatible; studio)") as client:
        assert (await submit(client)).id
    monkeypatch.setenv("ATLASCLOUD_USER_AGENT", "Mozilla/5.0 (env)")
    async with make_client(sim) as client:
        assert client.user_agent == "Mozilla/5.0 (env)"
        assert (await submit(client)).id
    assert sim.stats.jobs_created == 2
    with pytest.raises(ConfigError, match="one line"):
        AtlasClient("k", user_agent="a\r\nX-Injected: 1")


async def test_unknown_model_and_check_model(simulator: Any) -> None:
    async with make_client(simulator) as client:
        with pytest.raises(ModelNotFoundError) as err:
            await client.generate_video("minimax/hailuo-9/i2v", {"image": "https://x/y.png"})
        assert err.value.status_code == 404 and "not found" in str(err.value)
        await client.check_model(DEFAULT_MODEL)  # known: no error
        with pytest.raises(ModelNotFoundError, match=r"did you mean minimax/hailuo-2\.3/i2v-pro"):
            await client.check_model("minimax/hailuo-2.3/i2v-prox")
        assert DEFAULT_MODEL in await client.list_models()
    assert simulator.stats.jobs_created == 0


async def test_check_model_is_silent_when_the_list_cannot_be_read(
    make_simulator: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    sim = make_simulator(rate_429=1.0)
    async with make_client(sim, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01)) as c:
        await c.check_model("no/such-model")
    assert sim.stats.responses_by_status == {429: 2}
    assert "could not read the model list" in caplog.text


async def test_bad_input_is_a_bad_request_with_the_server_message(simulator: Any) -> None:
    async with make_client(simulator) as client:
        with pytest.raises(BadRequestError) as err:
            await submit(client, width=1280)  # not an input of this model
        assert err.value.status_code == 400
        assert "'width' not an input of this model" in str(err.value)
        assert err.value.body == {"code": 400, "msg": err.value.body["msg"]}
        with pytest.raises(ConfigError, match="'model'"):
            await client.generate_video(DEFAULT_MODEL, {"model": "x", "image": "y"})
    assert simulator.stats.jobs_created == 0


# -------------------------------------------------------------- rate limits


async def test_429_storm_on_generate_gives_up_without_creating_a_job(
    make_simulator: Callable[..., Any],
) -> None:
    sim = make_simulator()
    calls: list[int] = []
    async with make_client(sim, on_rate_limited=lambda: calls.append(1)) as client:
        uploaded = await client.upload_media(PICTURE, filename="c.png", content_type="image/png")
        sim.config.rate_429 = 1.0
        with pytest.raises(RateLimitedError) as err:
            await client.generate_video(DEFAULT_MODEL, {"image": uploaded.download_url})
    assert err.value.status_code == 429 and err.value.request_id
    assert sim.stats.generate_posts == FAST_RETRY.max_attempts  # retried: 429 is safe
    assert len(calls) == FAST_RETRY.max_attempts
    assert sim.stats.jobs_created == 0


async def test_partial_429_gets_through_with_exactly_one_job(
    make_simulator: Callable[..., Any],
) -> None:
    sim = make_simulator(latency_s=0.2, seed=9)
    calls: list[int] = []
    async with make_client(
        sim, retry=RetryPolicy(8, 0.01, 0.05), on_rate_limited=lambda: calls.append(1)
    ) as client:
        uploaded = await client.upload_media(PICTURE, filename="c.png", content_type="image/png")
        sim.config.rate_429 = 0.5  # seed 9: the first three rolls are 429s
        prediction = await client.generate_video(DEFAULT_MODEL, {"image": uploaded.download_url})
        done = await client.wait_for_prediction(
            prediction.id, deadline_s=20, schedule=fast_schedule()
        )
    assert done.status is PredictionStatus.SUCCEEDED
    assert sim.stats.generate_posts == 4 and sim.stats.jobs_created == 1
    assert len(calls) >= 3


# ---------------------------------------------------------------- polling


async def test_5xx_storm_while_polling_is_ridden_out(make_simulator: Callable[..., Any]) -> None:
    sim = make_simulator(latency_s=0.2)
    async with make_client(sim) as client:
        prediction = await submit(client)
        sim.config.rate_5xx = 1.0
        asyncio.get_running_loop().call_later(0.8, setattr, sim.config, "rate_5xx", 0.0)
        started = time.monotonic()
        done = await client.wait_for_prediction(
            prediction.id, deadline_s=20, schedule=fast_schedule()
        )
    assert done.status is PredictionStatus.SUCCEEDED
    assert time.monotonic() - started >= 0.7  # it really waited through the storm
    errors = sim.stats.responses_by_status.get(500, 0) + sim.stats.responses_by_status.get(503, 0)
    assert errors >= 5


async def test_not_visible_at_first_is_waited_through(make_simulator: Callable[..., Any]) -> None:
    sim = make_simulator(latency_s=0.2, not_visible_s=2.0)
    statuses: list[PredictionStatus] = []
    async with make_client(sim) as client:
        prediction = await submit(client)
        submitted = time.monotonic()
        done = await client.wait_for_prediction(
            prediction.id,
            deadline_s=20,
            schedule=fast_schedule(),
            submitted_monotonic=submitted,
            on_poll=lambda p: statuses.append(p.status),
        )
    assert done.status is PredictionStatus.SUCCEEDED
    assert statuses[0] is PredictionStatus.NOT_VISIBLE
    assert time.monotonic() - submitted >= 1.9


async def test_unknown_prediction_past_grace_is_not_a_model_error(simulator: Any) -> None:
    async with make_client(simulator) as client:
        young = await client.get_prediction("0" * 32, age_s=1.0)
        assert young.status is PredictionStatus.NOT_VISIBLE and young.request_id
        for age in (None, 31.0):
            with pytest.raises(NotFoundError) as err:
                await client.get_prediction("0" * 32, age_s=age)
            assert type(err.value) is PredictionNotFoundError  # not a model: don't stop a run
            assert not isinstance(err.value, ModelNotFoundError)
            assert err.value.prediction_id == "0" * 32
            assert err.value.status_code == 404 and "0" * 32 in str(err.value)


async def test_prediction_purged_after_retention_says_so(
    make_simulator: Callable[..., Any],
) -> None:
    sim = make_simulator(latency_s=0.1, retention_s=0.5)
    schedule = PollSchedule(
        DurationEstimator(initial_s=0.1), min_interval_s=0.05, not_visible_grace_s=0.2
    )
    async with make_client(sim) as client:
        prediction = await submit(client, prompt="never finishes")
        with pytest.raises(PredictionNotFoundError) as err:
            await client.wait_for_prediction(prediction.id, deadline_s=20, schedule=schedule)
        with pytest.raises(PredictionNotFoundError) as later:
            await client.get_prediction(prediction.id)  # age unknown: same answer
    for exc in (err.value, later.value):
        assert exc.prediction_id == prediction.id and exc.status_code == 404
        assert "purged or expired" in str(exc) and "never created" not in str(exc)
    assert "s after its submission" in str(err.value)
    assert sim.stats.responses_by_status[200] >= 2  # it was polled fine before the purge


async def test_moderation_failure_carries_code_1039(simulator: Any) -> None:
    async with make_client(simulator) as client:
        prediction = await submit(client, prompt="something nsfw here")
        with pytest.raises(PredictionFailedError) as err:
            await client.wait_for_prediction(prediction.id, deadline_s=20, schedule=fast_schedule())
    assert err.value.error_code == "1039"
    assert err.value.prediction_id == prediction.id
    assert err.value.error and "moderation" in err.value.error
    assert "1039" in str(err.value)


@pytest.mark.parametrize("running", ["pending", "running", "starting"])
async def test_other_running_names_are_waited_through(
    make_simulator: Callable[..., Any], running: str
) -> None:
    sim = make_simulator(latency_s=0.8)  # the first poll (~0.33 s) sees it running
    sim.config.status_aliases = {"processing": running, "completed": "succeeded"}
    seen: list[str | None] = []
    async with make_client(sim) as client:
        prediction = await submit(client)
        assert prediction.raw_status == running and prediction.status is PredictionStatus.RUNNING
        done = await client.wait_for_prediction(
            prediction.id,
            deadline_s=20,
            schedule=fast_schedule(),
            on_poll=lambda p: seen.append(p.raw_status),
        )
    assert done.status is PredictionStatus.SUCCEEDED and done.raw_status == "succeeded"
    assert running in seen and seen[-1] == "succeeded"


@pytest.mark.parametrize("ended", ["timeout", "cancelled", "canceled"])
async def test_provider_timeout_and_cancel_are_failures(
    make_simulator: Callable[..., Any], ended: str
) -> None:
    sim = make_simulator(latency_s=0.1, status_aliases={"failed": ended})
    async with make_client(sim) as client:
        prediction = await submit(client, prompt="nsfw")
        with pytest.raises(PredictionFailedError) as err:
            await client.wait_for_prediction(prediction.id, deadline_s=20, schedule=fast_schedule())
    assert err.value.prediction_id == prediction.id and ended in str(err.value)


async def test_html_poll_answers_are_retried_until_json(
    make_simulator: Callable[..., Any],
) -> None:
    # More HTML answers than one poll's retries: the poll loop itself rides them out.
    html = FAST_RETRY.max_attempts + 2
    sim = make_simulator(latency_s=0.1, html_poll_answers=html)
    seen: list[list[Prediction]] = [[], [], []]
    async with make_client(sim) as client:
        predictions = [await submit(client, prompt=f"row {i}") for i in range(3)]
        done = await asyncio.gather(
            *(
                client.wait_for_prediction(
                    p.id, deadline_s=20, schedule=fast_schedule(), on_poll=seen[i].append
                )
                for i, p in enumerate(predictions)
            )
        )
    assert all(d.status is PredictionStatus.SUCCEEDED and d.output_url for d in done)
    # Every poll is counted: the HTML pages, then the JSON answers the client saw.
    assert all(len(polls) >= 1 for polls in seen)
    assert sim.stats.polls == 3 * html + sum(len(polls) for polls in seen)


async def test_stuck_job_times_out_with_its_id(simulator: Any) -> None:
    async with make_client(simulator) as client:
        prediction = await submit(client, prompt="this one never finishes")
        started = time.monotonic()
        with pytest.raises(PredictionTimeoutError) as err:
            await client.wait_for_prediction(
                prediction.id, deadline_s=1.0, schedule=fast_schedule()
            )
    took = time.monotonic() - started
    assert err.value.prediction_id == prediction.id and prediction.id in str(err.value)
    assert 1.0 <= took < 2.5


async def test_warm_estimator_finds_jobs_done_on_first_poll(
    make_simulator: Callable[..., Any],
) -> None:
    sim = make_simulator(latency_s=0.4)
    # A prior 10x too long: the 1 s probe finds the first wave done.
    schedule = PollSchedule(DurationEstimator(initial_s=4.0), min_interval_s=0.05)
    async with make_client(sim) as client:
        uploaded = await client.upload_media(PICTURE, filename="c.png", content_type="image/png")

        async def one_row(i: int) -> int:
            submitted = time.monotonic()
            p = await client.generate_video(
                DEFAULT_MODEL, {"image": uploaded.download_url, "prompt": f"row {i}"}
            )
            seen: list[Prediction] = []
            await client.wait_for_prediction(
                p.id,
                deadline_s=20,
                schedule=schedule,
                submitted_monotonic=submitted,
                on_poll=seen.append,
            )
            return len(seen)

        cold = await asyncio.gather(*(one_row(i) for i in range(6)))
        sim.reset_stats()
        started = time.monotonic()
        warm = await asyncio.gather(*(one_row(i) for i in range(6, 12)))
        took = time.monotonic() - started
    assert cold == [1] * 6
    assert schedule.estimator.typical() == pytest.approx(0.4, abs=0.05)
    assert warm == [1] * 6 and sim.stats.polls == 6
    # No latency added beyond the first-poll margin (plus room for round trips on a
    # loaded machine; a fixed 1 s poll interval would already break it).
    assert took < 0.4 * FIRST_POLL_FACTOR + FIRST_POLL_SLACK_S + 0.55


async def test_deadline_is_kept_even_while_the_estimate_is_long(simulator: Any) -> None:
    # A prior guess of 45 s must not make a 1 s deadline wait 45 s.
    async with make_client(simulator) as client:
        prediction = await submit(client, prompt="never finishes")
        started = time.monotonic()
        with pytest.raises(PredictionTimeoutError):
            await client.wait_for_prediction(
                prediction.id,
                deadline_s=0.5,
                schedule=PollSchedule(DurationEstimator(), min_interval_s=0.0),
            )
    assert time.monotonic() - started < 1.5


# --------------------------------------------------------- lost answers


async def test_lost_generate_answer_is_ambiguous_and_not_retried(
    make_simulator: Callable[..., Any],
) -> None:
    sim = make_simulator(latency_s=0.2)
    async with make_client(sim, timeouts=Timeouts(generate_s=0.5)) as client:
        uploaded = await client.upload_media(PICTURE, filename="c.png", content_type="image/png")
        sim.config.generate_delay_s = 3.0
        started = time.monotonic()
        with pytest.raises(AmbiguousSubmissionError) as err:
            await client.generate_video(DEFAULT_MODEL, {"image": uploaded.download_url})
    assert time.monotonic() - started < 1.5
    assert isinstance(err.value.__cause__, httpx.ReadTimeout)
    assert "paid job may exist" in str(err.value)
    assert sim.stats.generate_posts == 1 and sim.stats.jobs_created == 1


async def test_refused_connection_on_generate_is_retried_then_transport_error() -> None:
    # Nothing listens on port 9: the request never left, so a retry is safe and no
    # ambiguity is claimed.
    from i2v.errors import TransportError

    async with AtlasClient("k", "http://127.0.0.1:9", retry=FAST_RETRY) as client:
        with pytest.raises(TransportError) as err:
            await client.generate_video(DEFAULT_MODEL, {"image": "https://x/y.png"})
    assert not isinstance(err.value, AmbiguousSubmissionError)
    assert isinstance(err.value.__cause__, httpx.ConnectError)


# ------------------------------------------------------------- downloads


async def test_download_cut_mid_stream_is_retried(
    make_simulator: Callable[..., Any], tmp_path: Path
) -> None:
    sim = make_simulator(latency_s=0.2, download_failures=1, pad_output_to_bytes=3_000_000)
    async with make_client(sim) as client:
        prediction = await submit(client)
        done = await client.wait_for_prediction(
            prediction.id, deadline_s=20, schedule=fast_schedule()
        )
        target = tmp_path / "v.mp4"
        with target.open("wb") as sink:
            result = await client.download_output(done.output_url or "", sink, chunk_size=65536)
    assert sim.stats.downloads == 2
    assert result.bytes == target.stat().st_size == 3_000_000  # no leftovers of try 1
    assert result.sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    check_mp4_file(target)


async def test_download_gives_up_with_output_error(make_simulator: Callable[..., Any]) -> None:
    sim = make_simulator(latency_s=0.2)
    async with make_client(sim, retry=RetryPolicy(3, 0.01, 0.02)) as client:
        prediction = await submit(client)
        done = await client.wait_for_prediction(
            prediction.id, deadline_s=20, schedule=fast_schedule()
        )
        sim.config.download_failures = 5
        with pytest.raises(OutputError, match="download of"):
            await client.download_output(done.output_url or "", io.BytesIO())
        with pytest.raises(OutputError, match="HTTP 404") as err:
            await client.download_output(f"{sim.url}/_sim/outputs/nope.mp4", io.BytesIO())
        assert err.value.status_code == 404
        assert sim.stats.responses_by_status[404] == 1  # a 404 is final: not retried
        sim.config.download_failures = 0
        sim.config.rate_5xx = 1.0
        with pytest.raises(OutputError) as err:
            await client.download_output(done.output_url or "", io.BytesIO())
        assert err.value.status_code in (500, 503)
    assert sim.stats.downloads == 3
    assert sum(sim.stats.responses_by_status.get(s, 0) for s in (500, 503)) == 3


async def test_key_is_sent_only_to_the_api_origin(simulator: Any) -> None:
    sent: list[tuple[str, bool]] = []

    async def record(request: httpx.Request) -> None:
        sent.append((request.url.host, "authorization" in request.headers))

    async with make_client(simulator) as client:
        for http in client.http_clients:
            http.event_hooks["request"].append(record)
        prediction = await submit(client)
        done = await client.wait_for_prediction(
            prediction.id, deadline_s=20, schedule=fast_schedule()
        )
        url = done.output_url or ""
        other_origin = url.replace("127.0.0.1", "localhost")  # same server, other origin
        await client.download_output(other_origin, io.BytesIO())
    assert ("localhost", False) in sent
    assert all(has_auth for host, has_auth in sent if host == "127.0.0.1")
    assert sent[-1] == ("localhost", False)


# ------------------------------------------------------------ secrecy


async def test_key_never_leaks_into_reprs_errors_or_logs(
    make_simulator: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    sim = make_simulator(latency_s=0.1)
    bad_sim = make_simulator(api_key="sk-the-right-one")
    raised: list[BaseException] = []

    async def capture(coro: Any) -> None:
        try:
            await coro
        except AtlasError as exc:
            raised.append(exc)

    client = make_client(sim, timeouts=Timeouts(generate_s=0.3))
    async with client, make_client(bad_sim) as bad:
        await capture(bad.generate_video(DEFAULT_MODEL, {"image": "https://x/y.png"}))
        await capture(submit(client, width=1))
        p = await submit(client, prompt="nsfw")
        await capture(client.wait_for_prediction(p.id, deadline_s=5, schedule=fast_schedule()))
        p = await submit(client, prompt="never finishes")
        await capture(client.wait_for_prediction(p.id, deadline_s=0.2, schedule=fast_schedule()))
        sim.config.generate_delay_s = 1.0
        await capture(submit(client))
        sim.config.rate_429 = 1.0
        await capture(submit(client))
    assert {type(e).__name__ for e in raised} == {
        "AuthError",
        "BadRequestError",
        "PredictionFailedError",
        "PredictionTimeoutError",
        "AmbiguousSubmissionError",
        "RateLimitedError",
    }
    with SyncAtlasClient(base_url=sim.url) as sync_client:
        texts = [str(client), repr(client), str(sync_client), repr(sync_client)]
    for exc in raised:
        link: BaseException | None = exc
        while link is not None:  # the whole chain, httpx exceptions included
            texts += [str(link), repr(link), repr(getattr(link, "__dict__", ""))]
            link = link.__cause__ or link.__context__
    texts += [r.getMessage() for r in caplog.records] + [caplog.text]
    assert len(caplog.records) > 10  # the logs did capture the traffic
    leaks = [t for t in texts if TEST_API_KEY in t or TEST_API_KEY[8:] in t]
    assert leaks == []
    assert "***" in repr(client)
    with pytest.raises(TypeError):
        pickle.dumps(client)


# ------------------------------------------------------------ pure parsing


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        ("processing", PredictionStatus.RUNNING),
        ("starting", PredictionStatus.RUNNING),
        ("pending", PredictionStatus.RUNNING),
        ("running", PredictionStatus.RUNNING),
        ("created", PredictionStatus.RUNNING),
        ("queued", PredictionStatus.RUNNING),
        ("in_progress", PredictionStatus.RUNNING),
        ("In Progress", PredictionStatus.RUNNING),
        ("completed", PredictionStatus.SUCCEEDED),
        ("succeeded", PredictionStatus.SUCCEEDED),
        ("SUCCESS", PredictionStatus.SUCCEEDED),
        ("failed", PredictionStatus.FAILED),
        ("canceled", PredictionStatus.FAILED),
        ("cancelled", PredictionStatus.FAILED),
        ("Canceled", PredictionStatus.FAILED),
        ("error", PredictionStatus.FAILED),
        ("fail", PredictionStatus.FAILED),
        ("timed out", PredictionStatus.TIMED_OUT),
        ("timed_out", PredictionStatus.TIMED_OUT),
        ("timeout", PredictionStatus.TIMED_OUT),
        ("warming_up", PredictionStatus.RUNNING),
        (None, PredictionStatus.RUNNING),
    ],
)
def test_parse_prediction_statuses(raw: str | None, status: PredictionStatus) -> None:
    p = parse_prediction({"code": 200, "data": {"id": "abc", "status": raw}})
    assert p.status is status and p.raw_status == raw


def test_parse_prediction_fields_and_envelopes() -> None:
    p = parse_prediction(
        {
            "data": {
                "id": "p1",
                "status": "failed",
                "outputs": None,
                "error": "rejected",
                "error_code": 1039,
                "metrics": {"predict_time": "12.5"},
                "created_at": "2025-01-01T00:00:00Z",
            }
        },
        request_id="r1",
    )
    assert (p.id, p.error, p.error_code, p.predict_time_s) == ("p1", "rejected", "1039", 12.5)
    assert p.outputs == () and p.request_id == "r1" and p.created_at == "2025-01-01T00:00:00Z"
    top = parse_prediction({"code": 200, "id": "p2", "status": "completed", "outputs": "u"})
    assert (top.id, top.status, top.outputs) == ("p2", PredictionStatus.SUCCEEDED, ("u",))
    many = parse_prediction({"data": {"id": "p3", "outputs": ["a", {"url": "b"}, "", None]}})
    assert many.outputs == ("a", "b")
    assert parse_prediction({"data": {}}, fallback_id="p4").id == "p4"
    assert parse_prediction({"data": {"id": "p5", "error_code": ""}}).error_code is None
    with pytest.raises(AtlasError, match="no id"):
        parse_prediction({"code": 200, "data": {"status": "processing"}})


def test_parse_upload() -> None:
    u = parse_upload(
        {"code": 200, "data": {"download_url": "https://u", "file_name": "a.png", "size": 5}}
    )
    assert (u.download_url, u.file_name, u.size) == ("https://u", "a.png", 5)
    with pytest.raises(AtlasError, match="download_url"):
        parse_upload({"code": 200, "data": {}})


class RewriteStatus(httpx.AsyncHTTPTransport):
    """A real HTTP transport that renames the simulator's `processing` on the way back:
    the simulator only speaks known statuses."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if "/prediction/" not in request.url.path:
            return response
        body = (await response.aread()).replace(b'"processing"', b'"warming_up"')
        headers = [(k, v) for k, v in response.headers.items() if k != "content-length"]
        return httpx.Response(response.status_code, headers=headers, content=body)


async def test_completed_without_output_is_an_output_error(
    make_simulator: Callable[..., Any],
) -> None:
    sim = make_simulator(latency_s=0.1, completed_without_output_rate=1.0)
    async with make_client(sim) as client:
        prediction = await submit(client)
        with pytest.raises(OutputError) as err:
            await client.wait_for_prediction(prediction.id, deadline_s=20, schedule=fast_schedule())
    assert err.value.prediction_id == prediction.id
    assert "provider finished" in str(err.value) and "without an output URL" in str(err.value)


async def test_unknown_status_counts_as_running_and_is_logged_once(
    make_simulator: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    sim = make_simulator(latency_s=0.5)
    seen: list[str | None] = []
    async with make_client(sim, transport=RewriteStatus()) as client:
        prediction = await submit(client)
        done = await client.wait_for_prediction(
            prediction.id,
            deadline_s=20,
            schedule=fast_schedule(),
            on_poll=lambda p: seen.append(p.raw_status),
        )
    assert done.status is PredictionStatus.SUCCEEDED
    assert seen.count("warming_up") >= 2
    warnings = [r for r in caplog.records if "unknown prediction status" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].name == "i2v.client"
