"""`i2v run` over `approve_over_usd`: with no terminal it needs `--yes` (exit 2, nothing
paid); with `--yes` it runs; under the threshold it never asks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.helpers import Terminal, cli_run, sim_config, write_manifest

pytestmark = [pytest.mark.usefixtures("prefect_harness"), pytest.mark.timeout(300)]


def test_no_terminal_needs_yes(simulator: Any, pictures: Path, tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "image": "astronaut.png", "prompt": f"cli {i}"} for i in range(3)]
    manifest = write_manifest(pictures, rows)
    config = sim_config(tmp_path, simulator, approve_over_usd=0.5)
    dest = tmp_path / "out"
    refused = cli_run(manifest, dest, config)
    assert refused.exit_code == 2, refused.output
    assert "pass --yes to approve it" in refused.output
    assert simulator.stats.jobs_created == 0 and simulator.stats.uploads == 0
    approved = cli_run(manifest, dest, config, "--yes")
    assert approved.exit_code == 0, approved.output
    assert simulator.stats.jobs_created == 3
    table = pd.read_parquet(dest / "results.parquet")
    assert set(table["status"]) == {"landed"}


def test_under_the_threshold_never_asks(simulator: Any, pictures: Path, tmp_path: Path) -> None:
    rows = [{"id": "r", "image": "astronaut.png", "prompt": "cheap"}]
    config = sim_config(tmp_path, simulator, approve_over_usd=0.5)
    result = cli_run(write_manifest(pictures, rows), tmp_path / "out", config)
    assert result.exit_code == 0, result.output


def test_the_question_holds_the_bar_still_on_a_terminal(
    simulator: Any, pictures: Path, tmp_path: Path
) -> None:
    """Through a pseudo-terminal: the question is the last thing on the screen until it
    is answered (the progress bar's redraws once overwrote it), and a `y` runs the rows."""
    rows = [{"id": f"t{i}", "image": "astronaut.png", "prompt": f"tty {i}"} for i in range(3)]
    manifest = write_manifest(pictures, rows)
    config = sim_config(tmp_path, simulator, approve_over_usd=0.5)
    args = ["run", str(manifest), "--dest", str(tmp_path / "out"), "--config", str(config)]
    term = Terminal(tmp_path, args)
    deadline = time.monotonic() + 120
    while b"Approve this run? [y/N]: " not in term.seen:
        assert time.monotonic() < deadline and term.proc.poll() is None, term.seen
        term.read(1.0)
    assert simulator.stats.jobs_created == 0, "nothing is paid before the answer"
    quiet = term.read(1.5)
    assert quiet == b"", f"the screen changed under the question: {quiet!r}"
    term.type("y\n")
    screen = term.finish()
    assert term.proc.returncode == 0, screen
    assert simulator.stats.jobs_created == 3
