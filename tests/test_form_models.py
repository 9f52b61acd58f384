"""The deployment form's model fields offered from the catalog (`i2v.form_models`),
on the parameter schema Prefect draws from the batch flow."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from i2v.form_models import offer_models

NAMES = ["kwaivgi/kling-v3.0-std/image-to-video", "google/veo3.1-fast/image-to-video"]


def _schema() -> dict[str, Any]:
    from prefect.utilities.callables import parameter_schema

    from flows.batch import i2v_batch

    return parameter_schema(i2v_batch).model_dump()


def test_the_model_fields_offer_the_catalog_and_take_any_name() -> None:
    from prefect.utilities.schema_tools import ValidationError, validate

    schema = _schema()
    before = copy.deepcopy(schema)
    offered, changed = offer_models(schema, NAMES)
    assert changed == 2 and schema == before, "the schema given is not changed in place"
    props = offered["definitions"]["BatchOptions"]["properties"]
    assert props["catalog_model"]["anyOf"][0]["enum"] == ["", *sorted(NAMES)]
    assert (
        props["catalog_model"]["title"]
        == before["definitions"]["BatchOptions"]["properties"]["catalog_model"]["title"]
    )
    assert props["models"]["items"]["anyOf"][0]["enum"] == sorted(NAMES)
    for name in ("", NAMES[0], "a-lab/listed-tomorrow/image-to-video"):
        options = {"catalog_model": name, "models": [name] if name else []}
        validate({"options": options}, offered, raise_on_error=True, ignore_required=True)
    with pytest.raises(ValidationError):
        validate({"options": {"models": [3]}}, offered, raise_on_error=True, ignore_required=True)


def test_a_schema_without_our_options_is_left_alone() -> None:
    schema = {"title": "Parameters", "type": "object", "properties": {"x": {"type": "string"}}}
    assert offer_models(schema, NAMES) == (schema, 0)
