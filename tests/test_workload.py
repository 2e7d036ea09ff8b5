"""One `Workload`: the job spec's field is the latency models' type, with one set of bounds."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prunesearch.choices import DType
from prunesearch.profilers.latency import Workload
from prunesearch.search.spec import SearchSpec


def test_the_spec_holds_the_profilers_workload():
    spec = SearchSpec(model="m", calibration="c", workload={"batch": 2, "prompt_tokens": 64, "generate_tokens": 8})
    assert type(spec.workload) is Workload
    assert spec.workload == Workload(2, 64, 8, DType.BF16)
    assert spec.workload.decode_steps == 7 and spec.workload.dtype_bytes == 2


@pytest.mark.parametrize(
    "fields",
    [
        {"generate_tokens": 0},
        {"prompt_tokens": 0},
        {"batch": 0},
        {"batch": 4097},
        {"dtype": "int8"},
    ],
)
def test_bad_workloads_fail_when_built_and_when_parsed(fields):
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        Workload(**fields)
    with pytest.raises(ValidationError):
        SearchSpec(model="m", calibration="c", workload=fields)


def test_unknown_workload_fields_are_refused():
    with pytest.raises(ValidationError, match="prompt"):
        SearchSpec(model="m", calibration="c", workload={"prompt": 64})


def test_a_workload_is_frozen_hashable_and_round_trips_as_json():
    spec = SearchSpec(model="m", calibration="c", workload={"generate_tokens": 1, "dtype": "fp32"})
    dumped = spec.model_dump(mode="json")["workload"]
    assert dumped == {"batch": 1, "prompt_tokens": 512, "generate_tokens": 1, "dtype": "fp32"}
    assert SearchSpec.model_validate(spec.model_dump(mode="json")) == spec
    assert hash(spec.workload) == hash(Workload(1, 512, 1, "fp32"))
    with pytest.raises(AttributeError):
        spec.workload.batch = 3  # type: ignore[misc]
