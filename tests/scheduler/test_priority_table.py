"""The priority table contract: parsing, validation, round trips."""

from __future__ import annotations

import pytest
import yaml

from scheduler.priority import InvalidSettings, ModelSettings, Priority, PriorityTable


def test_round_trip_through_yaml():
    table = PriorityTable(
        {
            "detector": ModelSettings(Priority.LATENCY_CRITICAL, 10.0, 4),
            "classifier": ModelSettings(),
            "ranker": ModelSettings(Priority.BATCH, 250.5),
        }
    )
    text = yaml.safe_dump(table.to_dict(), sort_keys=True)
    assert PriorityTable.from_dict(yaml.safe_load(text)) == table
    assert table.to_dict()["models"]["detector"] == {
        "priority": "latency-critical",
        "slo_ms": 10,
        "max_batch_size": 4,
    }


@pytest.mark.parametrize(
    "entry",
    [
        {"priority": "urgent"},
        {"priority": "latency-critical"},
        {"priority": "batch", "slo_ms": 0},
        {"priority": "batch", "slo_ms": "10"},
        {"priority": "batch", "max_batch_size": 0},
        {"priority": "batch", "max_batch_size": True},
        {"priority": "batch", "colour": "red"},
        "batch",
    ],
)
def test_invalid_entries_name_the_model(entry):
    with pytest.raises(InvalidSettings, match="'m'"):
        PriorityTable.from_dict({"models": {"m": entry}})


def test_empty_table():
    assert PriorityTable.from_dict(None).models == {}
    assert PriorityTable.from_dict({}).models == {}


def test_request_level_never_raises_a_model_above_its_class():
    assert Priority.BATCH.with_request_level(1) is Priority.BATCH
    assert Priority.BATCH.with_request_level(0) is Priority.BATCH
    assert Priority.LATENCY_CRITICAL.with_request_level(0) is Priority.LATENCY_CRITICAL
    assert Priority.LATENCY_CRITICAL.with_request_level(2) is Priority.BATCH
    assert Priority.LATENCY_CRITICAL.rank < Priority.BATCH.rank
