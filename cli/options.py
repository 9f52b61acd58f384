"""Options more than one `i2v` command takes, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="YAML options: configs/local.yaml (simulator) or configs/atlascloud.yaml.",
    ),
]
