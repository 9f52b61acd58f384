"""The checks each manifest row's fields pass (duration, prompt, id), each returning one
specific message for the row's `error`, or None when the field passes, so `i2v.manifest`
can mark a bad row and leave the other rows alone.
"""

from __future__ import annotations

import math

from i2v._constants import MAX_ID_CHARS, is_safe_id, show
from i2v.manifest_rules import Rules


def choices(values: tuple[int, ...]) -> str:
    words = [str(v) for v in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def parse_duration(raw: str, rules: Rules) -> tuple[int | None, str | None]:
    spec = rules.spec
    text = raw.strip()
    if spec.durations is None:
        if text:
            return None, f"{spec.name} takes no duration (got {text!r}); leave it empty"
        return None, None
    if not text:
        default = rules.default_duration
        return (spec.default_duration if default is None else default), None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number) and number.is_integer() and int(number) in spec.durations:
        return int(number), None
    use = f"use {choices(spec.durations)}"
    if not math.isfinite(number):
        return None, f"duration {text!r} is not a number; {use}"
    shown = str(int(number)) if number.is_integer() else text
    return None, f"duration {shown} is not allowed for {spec.name}; {use}"


def check_prompt(prompt: str, rules: Rules) -> str | None:
    spec = rules.spec
    if len(prompt) > spec.max_prompt_chars:
        return (
            f"prompt has {len(prompt)} characters; {spec.name} takes at most "
            f"{spec.max_prompt_chars}"
        )
    if not prompt and not spec.needs_image:
        return f"prompt is empty; {spec.name} needs a prompt"
    return None


def check_id(row_id: str | None, line: int, first_line_of: dict[str, int]) -> str | None:
    if row_id is None:
        return None
    if not is_safe_id(row_id):
        return (
            f"id {show(row_id)} cannot name a file: no '/', '\\' or control characters, "
            f"at most {MAX_ID_CHARS} characters"
        )
    folded = row_id.lower()
    if folded in first_line_of:
        return f"duplicate id {row_id!r} (first used on line {first_line_of[folded]})"
    first_line_of[folded] = line
    return None
