"""Error tree.

`AtlasError` is the root of everything the Atlas Cloud client raises; `AtlasAPIError`
subclasses say what an error answer means (mostly one per HTTP status family, see
`i2v.retry.classify_status`) and carry the status code, the `X-Request-ID` and the
server's message. Input and configuration problems have their own
roots so callers can tell "this row is bad" from "the provider said no".

No message ever contains the API key: the client never formats request headers into one.
"""

from __future__ import annotations


class I2VError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(I2VError):
    """Bad configuration or usage: the run stops before anything is paid (exit 2)."""


class InputError(I2VError):
    """One input (a row, a picture, a prompt) fails a check; only that row is rejected."""


class ManifestError(I2VError):
    """The manifest as a whole cannot be used (missing, empty, no `image` column)."""


class StorageError(I2VError):
    """A storage location cannot be read or written."""


class StorageUnavailable(StorageError):
    """The storage did not answer (connection refused or cut, 5xx, throttling) after its
    retries: it may answer again in a moment, unlike a missing bucket or a full disk."""


class DestUnreachable(StorageError):
    """DEST did not answer for longer than the run waits for it (`dest_wait_s`): the
    run stops, keeping the records it could not write on local disk (`i2v.journal`)."""


class UnreadableRecord(StorageError):
    """An input's durable record does not parse (cut short, edited by hand): that input
    needs a person; it is never paid again on a guess."""

    def __init__(self, message: str, *, uri: str) -> None:
        super().__init__(message)
        self.uri = uri


class FetchError(StorageError):
    """A picture URL could not be fetched (connection reset or refused, timeout, HTTP
    5xx): maybe transient, but only that row's. Checking the pictures rejects the row;
    the upload step retries it like any storage error."""


class AtlasError(I2VError):
    """Root of everything the Atlas Cloud client raises."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [self.message]
        if self.status_code is not None:
            parts.append(f"HTTP {self.status_code}")
        if self.request_id:
            parts.append(f"request id {self.request_id}")
        return " | ".join(parts)


class AtlasAPIError(AtlasError):
    """The API answered with an HTTP error status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
        body: object = None,
    ) -> None:
        super().__init__(message, status_code=status_code, request_id=request_id)
        self.body = body


class AuthError(AtlasAPIError):
    """401/403: the key is missing, wrong, or not allowed this model. Stops the run."""


class BlockedError(AtlasAPIError):
    """Cloudflare (or another proxy) refused the request with an error page before it
    reached the API: not a key problem. Often the User-Agent; stops the run."""


class InsufficientBalanceError(AtlasAPIError):
    """402, or a balance message on another status: the account cannot pay for more
    work. Stops submissions; nothing is lost."""


class NotFoundError(AtlasAPIError):
    """404: something the call named does not exist (which thing: see the subclasses)."""


class ModelNotFoundError(NotFoundError):
    """The model name is unknown (model check or generate). Stops the run."""


class PredictionNotFoundError(NotFoundError):
    """A prediction GET answered 400/404 past the not-visible grace: the id is unknown,
    typically because the provider purged the record after its retention."""

    def __init__(
        self,
        message: str,
        *,
        prediction_id: str,
        status_code: int | None = None,
        request_id: str | None = None,
        body: object = None,
    ) -> None:
        super().__init__(message, status_code=status_code, request_id=request_id, body=body)
        self.prediction_id = prediction_id


class BadRequestError(AtlasAPIError):
    """400/413/422: the request body was refused; the input is at fault, not retried."""


class RegionBlockedError(AtlasAPIError):
    """451: the service is not available from here. Stops the run."""


class RateLimitedError(AtlasAPIError):
    """429: too many requests; back off and lower concurrency."""


class ServerError(AtlasAPIError):
    """5xx, or a 2xx page that is not the API's JSON (a proxy's interstitial): trouble
    between us and the model; GETs are retried."""


class TransportError(AtlasError):
    """The connection failed (connect, read, reset) without an HTTP answer."""


class AmbiguousSubmissionError(AtlasError):
    """A generate POST was sent but its answer was lost: a paid job may exist.

    Never retried automatically: resubmitting could pay twice.
    """


class PredictionFailedError(AtlasError):
    """The provider finished the prediction with status `failed` (e.g. moderation 1039)."""

    def __init__(
        self,
        message: str,
        *,
        prediction_id: str,
        error: str | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.prediction_id = prediction_id
        self.error = error
        self.error_code = error_code


class PredictionTimeoutError(AtlasError):
    """A prediction was not done by the caller's deadline; it may still finish later."""

    def __init__(self, message: str, *, prediction_id: str) -> None:
        super().__init__(message)
        self.prediction_id = prediction_id


class OutputError(AtlasError):
    """The output video is missing, could not be downloaded, or is not a valid mp4.

    `prediction_id` is set when the provider finished that prediction without an output.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
        prediction_id: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, request_id=request_id)
        self.prediction_id = prediction_id
