"""`i2v status DEST [--json]`: what a DEST holds and what needs a person (no API call).

Registered on the app by `cli.main`. Exit codes: 0 nothing needs a person, 1 something
does, 2 usage or storage error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import usage_error

STATUS_EXAMPLES = """Examples:

\b
  i2v status out/demo
  i2v status s3://bucket/videos/run1 --json | jq .needs_person

  i2v status s3://bucket/videos/run1 --attach journal.jsonl

Reads DEST/_state/, DEST/results.parquet and DEST/runs/*/summary.json; calls no API
(but --reconcile, which reads the account's daily usage and costs with the key).
--attach writes the paid records a run kept on another machine (the journal file its
"DEST unreachable" message named) into DEST first.
Exit codes: 0 nothing needs a person, 1 something does (listed with what to do),
2 usage or storage error."""


def status(
    dest: Annotated[
        str,
        typer.Argument(
            help="A folder or s3://bucket/prefix written by i2v run.", show_default=False
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (for scripts).")
    ] = False,
    attach: Annotated[
        Path | None,
        typer.Option(
            "--attach",
            metavar="FILE",
            help="First write into DEST the paid records a stopped run kept in FILE (its journal).",
        ),
    ] = None,
    reconcile: Annotated[
        bool,
        typer.Option(
            "--reconcile",
            help="Compare with the provider's daily usage and costs (needs ATLASCLOUD_API_KEY).",
        ),
    ] = False,
) -> None:
    """Say what DEST holds: rows and inputs by status, money spent, the last runs, and
    the rows that need a person, each with what to do."""
    from i2v.dest import open_storage
    from i2v.errors import ConfigError, StorageError
    from i2v.local_storage import LocalStorage
    from i2v.status import dest_status
    from i2v.status_render import render_text

    try:
        storage = open_storage(dest)
        if isinstance(storage, LocalStorage) and not storage.root.is_dir():
            raise ConfigError(f"no DEST at {storage.root}: the folder does not exist")
        if attach is not None:
            _attach(storage, attach)
        found = dest_status(storage)
        checked = _reconcile(found) if reconcile else None
    except ConfigError as exc:
        raise typer.Exit(usage_error(exc)) from None
    except StorageError as exc:
        raise typer.Exit(usage_error(exc, "storage error")) from None
    if as_json:
        body = found.as_json()
        if checked is not None:
            body["reconcile"] = checked.model_dump(mode="json")
        sys.stdout.write(json.dumps(body, indent=1) + "\n")
    else:
        typer.echo(render_text(found))
        if checked is not None:
            from i2v.reconcile import render_reconciliation

            typer.echo(render_reconciliation(checked))
    raise typer.Exit(found.exit_code)


def _attach(storage: Any, path: Path) -> None:
    """Write a journal's kept records into DEST (what the next run there would do)."""
    from i2v.claims import Records
    from i2v.errors import ConfigError
    from i2v.journal import adopt_entries, read_journal
    from i2v.state import StateStore

    try:
        entries = read_journal(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    written, conflicts = adopt_entries(Records(StateStore(storage)), entries)
    sys.stderr.write(f"attached {path}: {written} kept records written into {storage.uri}\n")
    for conflict in conflicts:
        sys.stderr.write(f"  not attached: {conflict}\n")


def _reconcile(found: Any) -> Any:
    """The provider's daily figures beside the DEST's (`i2v.reconcile`); the key is
    ATLASCLOUD_API_KEY's and the host ATLASCLOUD_BASE_URL's, as for `i2v run`."""
    import asyncio

    from i2v.client import AtlasClient
    from i2v.reconcile import reconcile

    async def go() -> Any:
        async with AtlasClient(max_connections=4) as client:
            return await reconcile(client, found.spent.cells)

    return asyncio.run(go())
