"""Blocking wrapper of `AtlasClient`, for scripts and notebooks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, BinaryIO, TypeVar

from i2v.client import AtlasClient
from i2v.polling import PollSchedule
from i2v.session import DownloadResult
from i2v.types import Prediction, UploadedMedia

__all__ = ["SyncAtlasClient"]

_T = TypeVar("_T")


class SyncAtlasClient:
    """Blocking wrapper for scripts: each method runs the async one on a private loop.

    The loop lives in a background thread (an anyio blocking portal), so this also works
    where an event loop is already running (a notebook). Close it, or use `with`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from anyio.from_thread import start_blocking_portal

        # Build the async client first: a missing key raises before a thread starts.
        self._client = AtlasClient(*args, **kwargs)
        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._closed = False

    def __repr__(self) -> str:
        return f"Sync{self._client!r}"

    __str__ = __repr__

    def __enter__(self) -> SyncAtlasClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, fn: Callable[..., Coroutine[Any, Any, _T]], /, *args: Any, **kwargs: Any) -> _T:
        if self._closed:
            raise RuntimeError("SyncAtlasClient is closed")
        return self._portal.call(functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Close the connections and stop the background loop."""
        if self._closed:
            return
        try:
            self._portal.call(self._client.aclose)
        finally:
            self._closed = True
            self._portal_cm.__exit__(None, None, None)

    @property
    def client(self) -> AtlasClient:
        """The wrapped async client."""
        return self._client

    def list_models(self) -> list[str]:
        return self._run(self._client.list_models)

    def check_model(self, model: str) -> None:
        self._run(self._client.check_model, model)

    def upload_media(self, data: bytes, *, filename: str, content_type: str) -> UploadedMedia:
        return self._run(
            self._client.upload_media, data, filename=filename, content_type=content_type
        )

    def generate_video(self, model: str, inputs: Mapping[str, Any]) -> Prediction:
        return self._run(self._client.generate_video, model, inputs)

    def get_prediction(self, prediction_id: str, *, age_s: float | None = None) -> Prediction:
        return self._run(self._client.get_prediction, prediction_id, age_s=age_s)

    def wait_for_prediction(
        self,
        prediction_id: str,
        *,
        deadline_s: float,
        schedule: PollSchedule,
        submitted_monotonic: float | None = None,
        on_poll: Callable[[Prediction], None] | None = None,
    ) -> Prediction:
        return self._run(
            self._client.wait_for_prediction,
            prediction_id,
            deadline_s=deadline_s,
            schedule=schedule,
            submitted_monotonic=submitted_monotonic,
            on_poll=on_poll,
        )

    def download_output(
        self, url: str, sink: BinaryIO, *, chunk_size: int = 256 << 10
    ) -> DownloadResult:
        return self._run(self._client.download_output, url, sink, chunk_size=chunk_size)
