"""The machine a benchmark ran on, and the one markdown table it prints."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any

from harness import REPO

Row = tuple[str, str, str, str, str]  # number, measure, result, target, met


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, Python, Prefect, code revision and load right now."""
    cpu = "unknown"
    ram_kib = 0
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    with open("/proc/meminfo", encoding="utf-8") as f:
        ram_kib = next((int(ln.split()[1]) for ln in f if ln.startswith("MemTotal")), 0)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(ram_kib / 1024**2, 1),
        "python": platform.python_version(),
        "prefect": version("prefect"),
        "kernel": platform.release(),
        "revision": _revision(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }


def _revision() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{head} + local changes" if dirty else head


def render(settings: dict[str, Any], host: dict[str, Any], results: dict[str, Any]) -> str:
    """The whole result as one markdown table."""
    rows: list[Row] = [
        ("", "Machine", _machine_text(host), "", ""),
        ("", "Settings", _settings_text(settings), "", ""),
    ]
    rows += _efficiency_rows(settings, int(host["cores"] or 1), results.get("efficiency"))
    rows += _memory_rows(settings, results.get("memory"))
    rows += _rerun_rows(results.get("rerun"))
    rows += _sample_rows(results.get("sample"))
    rows += _startup_rows(results.get("startup"))
    rows += _cap_rows(results.get("cap"))
    rows += _scale_rows(results.get("scale"))
    rows += _fanout_rows(results.get("fanout"))
    rows += _qc_rows(results.get("qc"))
    head = ["#", "Measure", "Result", "Target", "Met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _machine_text(m: dict[str, Any]) -> str:
    load = m.get("load_before", [0.0])[0], m.get("load_after", [0.0])[0]
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, Prefect {m['prefect']}, code {m['revision']}; "
        f"1-min load average {load[0]:.2f} before, {load[1]:.2f} after"
    )


def _settings_text(s: dict[str, Any]) -> str:
    return (
        f"simulator latency L = {s['latency_s']:g} s, provider cap C = {s['cap']}, "
        f"`--concurrency {s['concurrency']}`, poll_interval_s {s['poll_interval_s']:g} "
        f"(default), expected_duration_s {s['expected_duration_s']:g} (= L), "
        f"timeout_s 600, no global concurrency limit; Prefect's temporary server, "
        f"fresh PREFECT_HOME"
    )


def _met(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def _error(number: str, measure: str, part: Any) -> list[Row] | None:
    if part is None:
        return []
    if isinstance(part, dict) and "error" in part:
        return [(number, measure, f"ERROR: {part['error']}", "", "**NO**")]
    return None


def _efficiency_rows(settings: dict[str, Any], host_cores: int, part: Any) -> list[Row]:
    early = _error("1", "Efficiency", part)
    if early is not None:
        return early
    rows: list[Row] = []
    for n, r in part.items():
        failed = _error("1", f"N = {n}", r)
        if failed is not None:
            rows += failed
            continue
        wall_text, wall_met = _wall_to_wall_text(r)
        rows.append(
            (
                "1",
                f"Efficiency, N = {n}",
                f"{r['efficiency']:.2f}: ideal {r['ideal_s']:.1f} s "
                f"({n} x {settings['latency_s']:g} s / {settings['cap']}), actual "
                f"{r['actual_s']:.1f} s (first submission -> last landing); "
                f"{r['landed']}/{n} landed. {wall_text}",
                ">= 0.80; wall to wall >= 0.90",
                f"{_met(r['efficiency'] >= 0.8)}; wall to wall {wall_met}",
            )
        )
        if "plain_loop" in r:
            rows.append(_plain_loop_row(n, r))
        rows.append(
            (
                "1",
                f"Wall time, N = {n}",
                f"{r['wall_s']:.1f} s = start-up {r['startup_s']:.1f} s (CLI start -> first "
                f"submission) + batch {r['actual_s']:.1f} s + end {r['end_s']:.1f} s (results "
                f"table written after {r['table_s']:.1f} s, then artifacts, Prefect shutdown); "
                f"peak RSS {r['peak_rss_mib']:.0f} MiB",
                "",
                "",
            )
        )
        rows.append(("1", f"CPU, N = {n}", _cpu_text(settings, host_cores, r), "", ""))
        rows.append(("1", f"Per-video times, N = {n}", _phases_text(r["phases"]), "", ""))
        rows.append(
            (
                "2",
                f"Polls per video, N = {n}",
                f"{r['polls_per_video']:.2f} ({r['polls']} polls / {r['jobs_created']} jobs); "
                f"{r['http_429']} x 429, max {r['max_in_flight']} in flight at the provider",
                "<= 3",
                _met(r["polls_per_video"] <= 3),
            )
        )
    return rows


def _plain_loop_row(n: Any, r: dict[str, Any]) -> Row:
    """The pipeline beside a plain asyncio loop (benchmarks/plain_loop.py), same bench run."""
    loop, ours = r["plain_loop"], r.get("wall_to_wall")
    theirs = loop.get("wall_to_wall")
    ahead = ours is not None and theirs is not None and ours > theirs
    return (
        "1",
        f"Beside a plain asyncio loop, N = {n}",
        f"wall to wall: the pipeline {ours or float('nan'):.2f}, the loop "
        f"{theirs or float('nan'):.2f} = ideal {r['ideal_s']:.1f} s / (median wall "
        f"{loop['wall_s']:.1f} s - its median 1-row run {loop['wall_1row_s']:.1f} s"
        + (f"; N-row walls {_seconds(loop['loop_walls_s']['n'])}" if "loop_walls_s" in loop else "")
        + "); the loop's "
        f"batch window {loop['efficiency']:.2f}, {loop['landed']}/{loop['rows']} landed, "
        f"max {loop['max_in_flight']} in flight",
        "wall to wall >= 0.88 and ahead of the loop",
        _met(ahead and ours is not None and ours >= 0.88),
    )


def _wall_to_wall_text(r: dict[str, Any]) -> tuple[str, str]:
    """Efficiency as a user sees it: ideal / (wall time - a warm 1-row run's)."""
    head = "Measured wall to wall, as a user sees it"
    base, ratio = r.get("wall_1row_s"), r.get("wall_to_wall")
    if base is None:
        return f"{head}: not measured (the startup scenario did not run)", "not measured"
    if ratio is None:
        return f"{head}: not measured (wall {r['wall_s']:.1f} s <= 1-row {base:.1f} s)", "?"
    if "walls_s" in r:  # rounds beside the plain loop: medians
        walls = r["walls_s"]
        return (
            f"{head}: {ratio:.2f} = ideal {r['ideal_s']:.1f} s / (median wall "
            f"{r['wall_n_s']:.1f} s - median warm 1-row run {base:.1f} s = "
            f"{r['wall_n_s'] - base:.1f} s; {len(walls['n'])} rounds, N-row walls "
            f"{_seconds(walls['n'])}, 1-row walls {_seconds(walls['one'])})",
            _met(ratio >= 0.9),
        )
    return (
        f"{head}: {ratio:.2f} = ideal {r['ideal_s']:.1f} s / (wall {r['wall_s']:.1f} s "
        f"- warm 1-row run {base:.1f} s = {r['wall_s'] - base:.1f} s)",
        _met(ratio >= 0.9),
    )


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values) + " s"


def _cpu_text(settings: dict[str, Any], cores: int, r: dict[str, Any]) -> str:
    text = (
        f"CLI {r['cli_cpu_s']:.1f} s, its Prefect server {r['prefect_server_cpu_s']:.1f} s, "
        f"simulator {r['sim_cpu_s']:.1f} s"
    )
    per_video = r.get("cpu_per_video_s")
    if not per_video:
        return text
    needed = settings["cap"] / settings["latency_s"]  # videos per second at the ideal
    ceiling = cores / per_video / needed
    return (
        f"{text}; {per_video * 1000:.0f} ms of CLI + Prefect-server CPU per video beyond "
        f"a 1-row run's, so {cores} cores sustain at most {cores / per_video:.1f} videos/s "
        f"vs the {needed:g}/s the ideal needs: CPU-bound ceiling {ceiling:.2f} efficiency"
    )


def _phases_text(p: dict[str, float]) -> str:
    def s(key: str) -> str:
        return f"{p[key]:.2f} s" if key in p else "?"

    return (
        f"medians: generate POST (with its write-ahead record) {s('post_s')}; submitted -> "
        f"a poll saw it done {s('wait_s')} (provider's own time {s('provider_s')}); "
        f"seen done -> landed {s('land_s')}"
    )


def _memory_rows(settings: dict[str, Any], part: Any) -> list[Row]:
    early = _error("3", "Peak RSS", part)
    if early is not None:
        return early
    rows: list[Row] = []
    big_mib = settings["pad_bytes"] / 2**20
    for where in ("local", "s3"):
        tiny, big = part.get(f"{where}-tiny"), part.get(f"{where}-big")
        measure = f"Peak RSS, {where} DEST"
        bad = next((r for r in (tiny, big) if r is None or "error" in r), None)
        if bad is not None:
            rows += _error("3", measure, bad or {"error": "not measured"}) or []
            continue
        assert tiny is not None and big is not None
        growth = big["peak_rss_mib"] - tiny["peak_rss_mib"]
        rows.append(
            (
                "3",
                measure,
                f"{growth:+.0f} MiB: {tiny['peak_rss_mib']:.0f} MiB with tiny videos "
                f"({tiny['video_mib']:.2f} MiB), {big['peak_rss_mib']:.0f} MiB with "
                f"{big['video_mib']:.0f} MiB videos; {big['rows']} rows each, submitted together",
                f"<= +64 MiB for {big_mib:.0f} MiB",
                _met(growth <= 64),
            )
        )
    return rows


def _rerun_rows(part: Any) -> list[Row]:
    early = _error("4", "Rerun", part)
    if early is not None:
        return early
    return [
        (
            "4",
            f"Rerun of the finished N = {part['n']} batch",
            f"{part['wall_s']:.1f} s wall, {part['api_calls']} API calls; "
            f"peak RSS {part['peak_rss_mib']:.0f} MiB",
            "0 API calls",
            _met(part["api_calls"] == 0),
        )
    ]


def _sample_rows(part: Any) -> list[Row]:
    early = _error("5", "Speed-up", part)
    if early is not None:
        return early
    versus = (
        f"vs the pipeline's measured {part['pipeline_wall_s']:.1f} s wall time "
        f"(start-up included): {part['speedup']:.1f}x faster"
        if part.get("pipeline_wall_s")
        else "(no pipeline run of that size to compare)"
    )
    return [
        (
            "5",
            f"Speed-up over the sample loop, N = {part['n']}",
            f"sample loop {part['per_row_s']:.2f} s/row measured on {part['rows']} rows "
            f"(poll every {part['poll_s']:g} s, as published) -> "
            f"{part['extrapolated_s']:.0f} s EXTRAPOLATED to {part['n']} rows, {versus}",
            "",
            "",
        )
    ]


def _startup_rows(part: Any) -> list[Row]:
    early = _error("6", "Start-up", part)
    if early is not None:
        return early
    rows: list[Row] = []
    for key, measure in (("warm", "1-row run"), ("cold", "First run of all (empty PREFECT_HOME)")):
        r = part.get(key)
        if r is None:
            continue
        failed = _error("6", measure, r)
        if failed is not None:
            rows += failed
            continue
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in r["parts"].items() if v is not None)
        share = r["parts"][r["dominant"]] / r["wall_s"]
        walls = r.get("walls_s") or []
        of = (
            f" (the median of {len(walls)} runs: {', '.join(f'{w:.1f}' for w in walls)} s)"
            if len(walls) > 1
            else ""
        )
        rows.append(
            (
                "6",
                measure,
                f"{r['wall_s']:.1f} s{of} = {parts}; dominated by {r['dominant']} ({share:.0%}). "
                f"CPU: CLI {r['cli_cpu_s']:.1f} s, its Prefect server "
                f"{r['prefect_server_cpu_s']:.1f} s",
                "",
                "",
            )
        )
    if "import_s" in part:
        rows.append(
            (
                "6",
                '`python -c "import flows.batch"`',
                f"{part['import_s']:.2f} s (bare `python -c pass`: {part['python_s']:.2f} s)",
                "",
                "",
            )
        )
    return rows


def _cap_rows(part: Any) -> list[Row]:
    if part is None:
        return []
    if (bad := _error("7", "Provider cap", part)) is not None:
        return bad
    n, limit = part["n"], part["limit"]
    free, capped = part["without"], part["with"]
    ratio = capped["efficiency"] / free["efficiency"]
    return [
        (
            "7",
            f"Provider cap, N = {n}, long-lived `prefect server`",
            f"with a global concurrency limit of {limit}: efficiency {capped['efficiency']:.2f} "
            f"({capped['actual_s']:.1f} s, max {capped['max_in_flight']} in flight) vs "
            f"{free['efficiency']:.2f} without ({free['actual_s']:.1f} s): {ratio:.2f} of it",
            ">= 0.95 of it, >= 0.8 of ideal",
            _met(ratio >= 0.95 and capped["efficiency"] >= 0.8),
        )
    ]


def _qc_rows(part: Any) -> list[Row]:
    if part is None:
        return []
    if (bad := _error("10", "Quality check", part)) is not None:
        return bad
    return [
        (
            "10",
            "Quality check, CPU per video",
            f"{part['probe_median_ms']:.1f} ms median, {part['probe_mean_ms']:.1f} ms mean, "
            f"{part['probe_p95_ms']:.1f} ms p95 over {part['videos']} simulator videos "
            f"({part['width']} px, 6 and 10 s; {part['frames_decoded']:.0f} frames decoded "
            f"each); decoding a whole clip: {part['full_decode_ms']:.1f} ms",
            "cheap (never a full decode)",
            _met(part["probe_median_ms"] < part["full_decode_ms"]),
        )
    ]


def _scale_rows(part: Any) -> list[Row]:
    if (bad := _error("8", "Scale", part)) is not None:
        return bad
    sizes = part["sizes"]
    ok = {n: r for n, r in sizes.items() if "error" not in r}
    rows: list[Row] = [
        ("8", f"Scale, N = {n}", f"ERROR: {r['error']}", "", "**NO**")
        for n, r in sizes.items()
        if "error" in r
    ]
    setup = (
        f"{part['pictures']} generated pictures, cap C = {part['cap']} "
        f"(`--concurrency {part['cap']}`), L = {part['latency_s']:g} s"
    )
    fit = part.get("slope") or {}
    slope = fit.get("kib_per_row")
    if ok:
        rss = " / ".join(f"{r['peak_rss_mib']:.0f}" for r in ok.values())
        names = " / ".join(f"{int(n):,}" for n in ok)
        slope_text = (
            f"{slope:.2f} KiB per extra row ({fit['between'][0]:,} -> {fit['between'][1]:,})"
            if slope is not None
            else "no slope"
        )
        rows.append(
            (
                "8",
                f"Peak RSS, {names} rows",
                f"{rss} MiB: {slope_text} ({setup})",
                "<= 8 KiB/row",
                _met(slope is not None and slope <= 8),
            )
        )
    base = part["base"]
    where = (
        "the startup scenario's warm 1-row run"
        if base["source"] == "startup"
        else "a warm 1-row run of this scenario (the startup scenario did not run)"
    )
    if ok:
        n, r = max(ok.items(), key=lambda kv: int(kv[0]))
        per_row = r["rerun_per_row_ms"]
        rows.append(
            (
                "8",
                f"Rerun per row, N = {int(n):,} finished",
                f"{per_row:.2f} ms/row = (rerun {r['rerun_wall_s']:.1f} s - {where} "
                f"{base['wall_s']:.1f} s) / {int(n):,}; {r['rerun_api_calls']} API calls, "
                f"peak RSS {r['rerun_peak_rss_mib']:.0f} MiB",
                "<= 2 ms/row",
                _met(per_row <= 2),
            )
        )
    rows += [
        (
            "8",
            f"Scale, N = {int(n):,}: runs that failed (their figures above were kept)",
            "; ".join(r["failures"]),
            "exit 0",
            "**NO**",
        )
        for n, r in ok.items()
        if r.get("failures")
    ]
    for n, r in ok.items():
        wall = f"{r['wall_to_wall']:.2f}" if r.get("wall_to_wall") is not None else "?"
        rows.append(
            (
                "8",
                f"Efficiency, N = {int(n):,}",
                f"{r['efficiency']:.2f}: ideal {r['ideal_s']:.0f} s ({n} x "
                f"{part['latency_s']:g} s / {part['cap']}), actual {r['actual_s']:.1f} s; "
                f"wall {r['wall_s']:.1f} s, wall to wall {wall}; {r['jobs_created']} jobs",
                "",
                "",
            )
        )
    return rows


def _fanout_rows(part: Any) -> list[Row]:
    if part is None:
        return []
    measure = "Fan-out, long-lived `prefect server`, two process workers"
    if "parent_state" not in part:
        return _error("9", measure, part) or []
    n, limit = part["rows"], part["limit"]
    measure = f"Fan-out, N = {n} in {part['shards']} shards, two process workers"
    crashed, failed = part["crashed_task_runs"], part["flow_runs_not_completed"]
    in_flight = part["max_in_flight"]
    facts = (
        f"max {in_flight} in flight at the provider; {crashed} Crashed task runs (of "
        f"{part['task_runs']}), {failed} flow runs not Completed (of {part['flow_runs']}); "
        f"{part['jobs_created']} jobs for {n} rows, {part['paid_twice']} paid twice; "
        f"shards per worker {part['shards_per_worker']}; {part['slots_held_after']} slots "
        "held after"
        + (
            f"; paid for by run {part['submissions_by_run']}"
            if part.get("submissions_by_run")
            else ""
        )
    )
    if "efficiency" not in part:
        return [("9", measure, f"ERROR: {part.get('error')}; {facts}", "", "**NO**")]
    parent = (
        f"{part['parent_efficiency']:.2f} of ideal ({part['parent_wall_s']:.1f} s)"
        if part.get("parent_wall_s")
        else "?"
    )
    every = part["landed"] == n and part["jobs_created"] == n and part["paid_twice"] == 0
    user = part["created_to_final_efficiency"]
    spread = len([w for w in part["shards_per_worker"] if w != "?"]) >= 2
    ok = user >= 0.6 and spread and crashed == 0 and in_flight <= limit and every
    return [
        (
            "9",
            measure,
            f"{user:.2f} from create to Completed, as a user sees it: ideal "
            f"{part['ideal_s']:.1f} s / {part['created_to_final_s']:.1f} s; batch window "
            f"{part['efficiency']:.2f}: ideal {part['ideal_s']:.1f} s ({n} x L / {limit}, "
            f"global concurrency limit {limit}, `concurrency` {part['concurrency']} per "
            f"shard), actual {part['actual_s']:.1f} s (first submission -> last landing); "
            f"{part['landed']}/{n} landed; the parent flow run's wall time {parent}, "
            f"created -> final {part['created_to_final_s']:.1f} s = {part['startup_s']:.1f} s "
            f"to the first submission + batch + {part['end_s']:.1f} s after the last landing; "
            f"{facts}",
            f">= 0.6 of ideal from create to Completed, shards on both workers, 0 Crashed, "
            f"<= {limit} in flight",
            _met(ok),
        )
    ]


def write(results_dir: Path, table: str, raw: dict[str, Any]) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "latest.md").write_text(table, encoding="utf-8")
    (results_dir / "latest.json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
