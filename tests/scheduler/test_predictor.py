"""The predictor against hand-computed delays."""

from __future__ import annotations

import pytest

from scheduler.job import Plan
from scheduler.predictor import Predictor, fixed_plan
from scheduler.profile import DeviceCosts, InvalidProfile, Profile

US = 1e-6
D = [10 * US, 20 * US, 30 * US]
P = Predictor(DeviceCosts(launch_s=5 * US, sync_s=20 * US))


def test_one_chunk_hides_launches_behind_the_device():
    # launches at 5, 10, 15 us; device 5-15, 15-35, 35-65; sync 20 -> 85 us
    assert P.chunk_time(D, 0, 3) == pytest.approx(85 * US)


def test_launch_bound_chunk():
    tiny = [1 * US, 1 * US]
    # host 5 -> device 6; host 10 -> device 11; + sync
    assert P.chunk_time(tiny, 0, 2) == pytest.approx(31 * US)


def test_per_unit_plan_delays():
    pred = P.predict(D, fixed_plan(3, 1))
    chunks = [35 * US, 45 * US, 55 * US]
    assert pred.inference_delay == pytest.approx(sum(chunks))
    assert pred.preemption_worst == pytest.approx(55 * US)
    assert pred.preemption_expected == pytest.approx(sum(c * c for c in chunks) / (2 * sum(chunks)))


def test_budget_plan_has_the_fewest_sync_points_within_the_budget():
    plan = P.plan_for_budget(D, budget=60 * US)
    # [0,2): 5+10=15, then 15+20=35, +20 sync = 55 <= 60; adding unit 2 -> 85 > 60
    assert plan == Plan(1, (2, 3))
    assert P.plan_for_budget(D, budget=1 * US).chunk_ends == (1, 2, 3)  # finest
    assert P.plan_for_budget(D, budget=1.0).chunk_ends == (3,)


def test_fixed_plan():
    assert fixed_plan(10, 4).chunk_ends == (4, 8, 10)
    assert fixed_plan(3, 1).chunk_ends == (1, 2, 3)


def test_profile_interpolates_batch_sizes():
    p = Profile({1: (1.0, 2.0), 4: (4.0, 8.0)})
    assert p.units(2) == pytest.approx((2.0, 4.0))
    assert p.units(8) == pytest.approx((8.0, 16.0))  # extrapolated along the last segment
    single = Profile({4: (4.0,)})
    assert single.units(2) == pytest.approx((2.0,))
    assert single.units(8) == pytest.approx((8.0,))


def test_micro_batch_durations():
    p = Profile({1: (1.0,), 2: (1.5,), 4: (3.0,)})
    assert P.flat_durations(p, 4, 2) == (1.5, 1.5)
    assert P.flat_durations(p, 3, 2) == (1.5, 1.0)


@pytest.mark.parametrize(
    "bad", [{}, {1: ()}, {1: (1.0,), 2: (1.0, 2.0)}, {0: (1.0,)}, {1: (-1.0,)}]
)
def test_bad_profiles(bad):
    with pytest.raises(InvalidProfile):
        Profile(bad)


def test_flat_durations_follow_each_profile_even_short_lived_ones():
    predictor = Predictor(DeviceCosts.from_us(0.0, 0.0))
    for units in (4, 16, 2, 12, 3):
        # each profile dies after use; a later one may be given the same id()
        got = predictor.flat_durations(Profile.from_us({"8": [1.0] * units}), 8)
        assert len(got) == units
