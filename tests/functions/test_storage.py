"""The storage port's JSON records: what every handler writes under processed/, models/,
rejected/ and runs/."""

from __future__ import annotations

import json

import pytest

from pipeline_core.errors import PreconditionFailedError
from pipeline_core.storage import JSON_CONTENT_TYPE, read_json, write_json
from tests.functions.fakes import InMemoryStorage


def test_records_round_trip_as_sorted_json(storage: InMemoryStorage) -> None:
    write_json(storage, "models/champion.json", {"b": 1, "a": [1.5, "x"]})
    assert read_json(storage, "models/champion.json") == {"a": [1.5, "x"], "b": 1}
    raw = storage.read("models/champion.json").data.decode()
    assert raw.index('"a"') < raw.index('"b"')
    assert storage.content_types["models/champion.json"] == JSON_CONTENT_TYPE


def test_non_finite_numbers_are_refused_and_nothing_is_written(storage: InMemoryStorage) -> None:
    with pytest.raises(ValueError, match="JSON compliant"):
        write_json(storage, "processed/x/1/stats.json", {"std": float("nan")})
    assert storage.stat("processed/x/1/stats.json") is None


def test_create_only_precondition_is_passed_through(storage: InMemoryStorage) -> None:
    write_json(storage, "runs/raw/x.csv/1.json", {"execution": "e1"}, if_generation_match=0)
    with pytest.raises(PreconditionFailedError):
        write_json(storage, "runs/raw/x.csv/1.json", {"execution": "e2"}, if_generation_match=0)
    assert json.loads(storage.read("runs/raw/x.csv/1.json").data) == {"execution": "e1"}
