"""The fold's compiled pass (``_fold.c``) leaves a series exactly as the pure-Python path does."""

from __future__ import annotations

import math
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider

from exitstack_otel import sdk_histograms
from exitstack_otel.sdk_histograms import HistogramSeries
from tests.conftest import require_compiled

require_compiled("_fold", sdk_histograms._fold_batch is not None)

fold_batch: Any = sdk_histograms._fold_batch
BOUNDARIES = (0.0, 0.005, 0.01, 0.1, 1.0, 10.0)
PROVIDER = MeterProvider()
HISTOGRAM = PROVIDER.get_meter("test").create_histogram("exitstack.test.fold")


def _series() -> HistogramSeries:
    return HistogramSeries(HISTOGRAM, {}, "key", BOUNDARIES)


def _state(series: HistogramSeries) -> tuple[object, ...]:
    # the sum, min and max with their types (an int sum stays an int, -0.0 stays -0.0)
    def typed(value: object) -> tuple[object, ...]:
        sign = math.copysign(1.0, value) if isinstance(value, float) else None
        return type(value), value, sign

    return tuple(series._counts), typed(series._sum), typed(series._min), typed(series._max)


def _folded(batches: list[list[Any]], compiled: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[object, ...]:
    with monkeypatch.context() as patch:
        if not compiled:
            patch.setattr(sdk_histograms, "_fold_batch", None)
        series = _series()
        for batch in batches:
            series._pending.extend(batch)
            series._fold()
        return _state(series)


def _same(batches: list[list[Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    assert _folded(batches, True, monkeypatch) == _folded(batches, False, monkeypatch)


floats = st.one_of(
    st.floats(min_value=0.0, max_value=20.0),
    st.sampled_from([0.0, -0.0, *BOUNDARIES, 0.0050000001, 1e-300]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(floats, min_size=1, max_size=40), min_size=1, max_size=4))
def test_float_batches_fold_alike(batches: list[list[float]]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _same(batches, monkeypatch)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=40), min_size=1, max_size=4
    )
)
def test_int_batches_fold_alike(batches: list[list[int]]) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        _same(batches, monkeypatch)


@pytest.mark.parametrize(
    "batch",
    [
        [0.5, 1],  # mixed: the Python path's
        [1, 0.5],
        [0.5, math.nan],
        [0.5, math.inf],
        [0.5, -1.0],
        [-0.0001],
        [2**60],  # an int no double holds exactly
        [True, 1],  # a bool is an int subclass, not an int
        [0.5, "x"],
    ],
)
def test_what_the_compiled_pass_leaves_to_python(batch: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    counts = [0] * (len(BOUNDARIES) + 1)
    assert fold_batch(list(batch), BOUNDARIES, counts, 0) is None
    assert counts == [0] * (len(BOUNDARIES) + 1), "nothing counted"
    if "x" not in batch:
        _same([list(batch)], monkeypatch)


def test_a_float_batch_onto_an_int_sum_and_an_int_batch_onto_a_float_sum() -> None:
    counts = [0] * (len(BOUNDARIES) + 1)
    assert fold_batch([0.25], BOUNDARIES, counts, 1) == (1.25, 0.25, 0.25)
    assert fold_batch([2], BOUNDARIES, counts, 0.5) is None  # the Python path adds those
    assert fold_batch([2, 3], BOUNDARIES, counts, 7) == (12, 2, 3)
    assert counts == [0, 0, 0, 0, 1, 2, 0]


def test_the_first_of_equal_lowest_and_highest_is_kept() -> None:
    counts = [0] * (len(BOUNDARIES) + 1)
    low, high = -0.0, 1.0
    total, lowest, highest = fold_batch([0.5, low, 0.0, high, 1.0], BOUNDARIES, counts, 0.0)
    assert lowest is low
    assert highest is high
    assert total == 2.5


def test_the_fold_keeps_no_reference() -> None:
    values = [0.5 + i for i in range(3)]
    before = [sys.getrefcount(value) for value in values]
    for _ in range(1000):
        fold_batch(values, BOUNDARIES, [0] * (len(BOUNDARIES) + 1), 0.0)
    assert [sys.getrefcount(value) for value in values] == before
