"""What a manifest's rows are checked against: the model, the run's defaults, where
pictures may come from. Built once per manifest by `i2v.manifest.read_manifest`; the
field checks (`i2v.fields`) and the image resolvers (`i2v.resolve`) read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from i2v.models import ModelSpec
from i2v.private_hosts import Allowance


@dataclass(frozen=True)
class Rules:
    spec: ModelSpec
    default_prompt: str
    default_duration: int | None
    allow_outside_base: bool
    allowed_schemes: tuple[str, ...]
    private_hosts: Allowance
    catalog_model: str = ""  # the model of rows with an empty `model` cell, when not `spec`
