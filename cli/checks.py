"""What `i2v run` checks before Prefect starts, so a usage error answers in a second.

The config, the key's presence, the DEST's form (`check_setup`, before the temporary
server is started) and the manifest (exists, readable, has `image`: `count_rows`, while
it starts): nothing here calls the API or pays. The flow checks all of it again,
because a deployment run never passes through the CLI.
"""

from __future__ import annotations

import os

from i2v._constants import API_KEY_ENV
from i2v.config import BatchOptions
from i2v.dest import open_storage
from i2v.errors import ConfigError


def check_setup(dest: str, options: BatchOptions) -> None:
    """Raise a ConfigError or StorageError for a missing key or a DEST of the wrong form."""
    needs_key = not (options.dry_run or options.api.simulator or options.api.api_key_secret_block)
    if needs_key and not os.environ.get(API_KEY_ENV, "").strip():
        raise ConfigError(
            f"{API_KEY_ENV} is not set: export it (export {API_KEY_ENV}=...), name a Prefect "
            "Secret block in api.api_key_secret_block, or use configs/local.yaml for the "
            "simulator"
        )
    open_storage(dest)  # the DEST's form: a folder (not a file) or s3://bucket/prefix


def count_rows(source: str, options: BatchOptions) -> int:
    """Raise a ManifestError (or StorageError) for a manifest that would stop the run;
    return its number of rows."""
    from i2v.manifest import read_manifest_for

    s3 = None
    if source.startswith("s3://"):
        from i2v.s3 import make_s3_client

        s3 = make_s3_client()
    return len(read_manifest_for(source, options, s3).rows)
