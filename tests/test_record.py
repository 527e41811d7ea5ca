"""The run record's schema (normbench/record.py): what a metrics.json may hold. Disk operations
on records are tested in test_store.py."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from normbench import record


def test_a_record_round_trips_through_json_nan_losses_included(make_record):
    r = make_record(train_loss=math.nan)
    back = record.RunRecord.model_validate_json(r.model_dump_json())
    assert back.run_id == r.run_id and math.isnan(back.train_loss) and back.history == r.history


@pytest.mark.parametrize("change, said", [
    ({"test_accuracy": 1.5}, "test_accuracy"),
    ({"run_id": "../etc-0123456789ab"}, "NAME-HASH12"),
    ({"epochs": "2"}, "epochs"),  # no strings for numbers
    ({"status": "running"}, "status"),
])
def test_fields_are_checked_by_type_and_range(make_record, change, said):
    doc = json.loads(make_record().model_dump_json())
    doc.update(change)
    with pytest.raises(ValidationError, match=said):
        record.RunRecord.model_validate_json(json.dumps(doc))


@pytest.mark.parametrize("value, said", [
    ("x" * (record.MAX_TEXT + 1), "a string of 65,537 characters"),
    (10 ** 30, "an integer of 31 digits"),
])
def test_free_form_fields_refuse_values_readers_cannot_hold(make_record, value, said):
    doc = json.loads(make_record().model_dump_json())
    doc["env"] = {"deep": {"er": [1, value]}}
    raw = json.dumps(doc).encode()
    assert not record.scalars_fit(raw)  # the raw-byte shortcut never hides a fault
    with pytest.raises(ValidationError, match=said):
        record.RunRecord.model_validate_json(raw)


def test_nesting_is_bounded_and_the_shortcut_agrees_with_the_walk(make_record):
    doc = json.loads(make_record().model_dump_json())
    deep: dict = {}
    node = deep
    for _ in range(record.MAX_DEPTH + 2):
        node["k"] = {}
        node = node["k"]
    doc["env"] = deep
    raw = json.dumps(doc).encode()
    assert record.scalars_fit(raw)  # small, no long number: only the nesting is checked
    with pytest.raises(ValidationError, match="nested deeper than 32"):
        record.RunRecord.model_validate_json(raw, context={"scalars_fit": True})
    fine = json.loads(make_record().model_dump_json())
    fine["env"]["counter"] = 12345678901234567  # 17 digits: fits in 2**63
    assert record.scalars_fit(json.dumps(fine).encode())
