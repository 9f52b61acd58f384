"""The deployment form's model fields, offered from the catalog at deploy time.

A deployment's form is drawn from its parameter schema, which `prefect deploy` takes
from the flow's signature: `catalog_model` and the bake-off's `models` are plain text
there. `offer_models` gives them the catalog's image-to-video models as choices, with
any other name still accepted (a model listed after the deploy, or one the catalog
hides). The run checks every name against the catalog anyway (`i2v.row_models`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

OPTIONS_MODEL = "BatchOptions"  # the flows' `options` parameter, in the schema's definitions
KEPT = ("title", "description", "default", "position")


def offer_models(schema: dict[str, Any], names: Sequence[str]) -> tuple[dict[str, Any], int]:
    """A copy of a deployment's parameter schema whose model fields offer `names`, and
    how many fields it changed (0: the schema has no options of ours)."""
    schema = copy.deepcopy(schema)
    definitions = schema.get("definitions") or schema.get("$defs") or {}
    props = definitions.get(OPTIONS_MODEL, {}).get("properties", {})
    choice = _choice(sorted(names))
    changed = 0
    if "catalog_model" in props:
        field = props["catalog_model"]
        # "" (the form's empty field) keeps its meaning: the config's model.
        props["catalog_model"] = {
            **{k: field[k] for k in KEPT if k in field},
            "anyOf": [{**choice[0], "enum": ["", *choice[0]["enum"]]}, choice[1]],
        }
        changed += 1
    if "models" in props:
        field = props["models"]
        props["models"] = {
            **{k: field[k] for k in KEPT if k in field},
            "type": "array",
            "items": {"anyOf": choice},
        }
        changed += 1
    return schema, changed


def _choice(names: list[str]) -> list[dict[str, Any]]:
    return [
        {"type": "string", "title": "From the catalog", "enum": names},
        {"type": "string", "title": "Another name"},
    ]
