"""Before anything is paid: prove the model exists, the key works and the host is the API.

Two free requests: the public model list (which may also carry the model's price), and a
GET of a prediction that cannot exist, which answers 401 for a bad key, an HTML page for
a Cloudflare block, and 400/404 for a good key.
"""

from __future__ import annotations

import logging

from i2v.client import AtlasClient
from i2v.errors import (
    AtlasAPIError,
    AuthError,
    BlockedError,
    ModelNotFoundError,
    NotFoundError,
    RegionBlockedError,
)
from i2v.run import RunAborted

log = logging.getLogger("i2v.preflight")

PROBE_PREDICTION_ID = "i2v-preflight-key-check"


async def preflight(client: AtlasClient, model: str) -> float | None:
    """Raise RunAborted unless `model` exists and the key works; return the catalog's
    price for the model (USD per video at its default duration) when it lists one."""
    try:
        price = await client.check_model(model)
    except ModelNotFoundError as exc:
        raise RunAborted(
            f"model {model!r} is not offered by Atlas Cloud ({exc}); check the `model` option"
        ) from None
    except BlockedError as exc:
        raise RunAborted(str(exc)) from None
    try:
        await client.get_prediction(PROBE_PREDICTION_ID)
    except BlockedError as exc:
        raise RunAborted(str(exc)) from None
    except (AuthError, RegionBlockedError) as exc:
        raise RunAborted(
            f"Atlas Cloud refused the API key (HTTP {exc.status_code}): check ATLASCLOUD_API_KEY"
            " (or the Secret block named in the config)"
        ) from None
    except NotFoundError:
        pass
    except AtlasAPIError as exc:
        if exc.status_code not in (400, 404):
            raise
    return price
