"""ldm/radar/augment.py against closed forms: classic augmentation's transforms (time shift, Doppler frequency shift,
drifting frequency disturbance, Doppler scaling, gain), the margin and physics filters, class balancing. The few-shot
experiment that uses them is tested in tests/test_fewshot.py."""
import math

import numpy as np
import pytest
import torch

from ldm.radar.augment import (ClassicAugment, class_margins, margin_filter, margin_threshold, physics_filter,
                               physics_ranges)

pytestmark = pytest.mark.usefixtures("one_thread")   # see tests/conftest.py

STILL = dict(time_shift=False, time_scale=0.0, doppler_shift=0.0, doppler_scale=0.0, gain_db=0.0,
             doppler_disturbance=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Classic augmentation
# ----------------------------------------------------------------------------------------------------------------
def test_classic_augment_keeps_shape_and_range_and_follows_the_generator():
    x = torch.rand(6, 1, 32, 24) * 2 - 1
    aug = ClassicAugment(time_scale=0.1, doppler_shift=0.05, doppler_scale=0.1, gain_db=10.0)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(3)
    aug(x, gen)
    assert gen.get_state().ne(torch.Generator().manual_seed(3).get_state()).any()   # it drew from the generator
    assert torch.equal(ClassicAugment(**STILL)(x, gen), x)               # all amounts zero: unchanged


def test_classic_augment_transforms_match_closed_forms():
    gen = torch.Generator().manual_seed(0)
    # Time shift alone: a 1-column line moves as a whole to one or two adjacent columns (linear interpolation,
    # wrapping around), by its own amount in each sample; nothing is lost.
    x = torch.full((4, 1, 16, 20), -1.0)
    x[:, :, :, 3] = 0.2
    shifted = ClassicAugment(**{**STILL, "time_shift": True})(x, gen) + 1                  # (4, 1, 16, 20) >= 0
    assert torch.allclose(shifted.sum(dim=(1, 2, 3)), (x + 1).sum(dim=(1, 2, 3)))
    columns = []
    for sample in shifted[:, 0]:
        lit = torch.nonzero(sample.sum(0) > 1e-5)[:, 0].tolist()
        assert len(lit) <= 2 and (len(lit) == 1 or lit[1] - lit[0] in (1, 19))   # adjacent (19 and 0 too)
        assert torch.allclose(sample, sample[:1].expand(16, -1))       # every row moved alike
        columns.append(tuple(lit))
    assert len(set(columns)) > 1
    # Gain alone: +g dB adds 2 g / range, |g| <= 5 dB, away from the clip limits.
    x = torch.full((4, 1, 16, 20), 0.2)
    x[:, :, 5] = 0.6
    gained = ClassicAugment(**{**STILL, "gain_db": 5.0}, dynamic_range_db=50.0)(x, gen)
    offset = gained[:, 0, 0, 0] - 0.2                                     # (4,) one value per sample
    assert (offset.abs() <= 0.2 + 1e-6).all() and offset.abs().max() > 0.01
    assert torch.allclose(gained, x + offset[:, None, None, None], atol=1e-6)
    # Doppler shift alone: a velocity line moves by at most doppler_shift * H = 1.6 rows, its energy kept.
    x = torch.full((4, 1, 16, 20), -1.0)
    x[:, :, 5] = 0.6
    moved = ClassicAugment(**{**STILL, "doppler_shift": 0.1})(x, gen)[:, 0, :, 10] + 1       # (4, 16)
    centre = (moved * torch.arange(16.0)).sum(1) / moved.sum(1)
    assert ((centre - 5).abs() <= 1.6 + 1e-5).all() and (centre - 5).abs().max() > 0.05
    assert torch.allclose(moved.sum(1), torch.full((4,), 1.6))
    # Doppler scaling alone keeps the centre row (0 m/s on a symmetric axis) and spreads symmetrically about it.
    y = torch.full((3, 1, 15, 8), -1.0)
    y[:, :, 7] = 1.0
    scaled = ClassicAugment(**{**STILL, "doppler_scale": 0.3})(y, gen)[:, 0, :, 0] + 1        # (3, 15)
    assert torch.allclose(scaled[:, 7], torch.full((3,), 2.0))
    assert torch.allclose((scaled * torch.arange(15.0)).sum(1) / scaled.sum(1), torch.full((3,), 7.0))


def test_doppler_disturbance_moves_each_column_by_a_smooth_bounded_offset():
    # A velocity line at row 10 of a 32-row image: each column's line centre moves by a sin(2 pi f j / W + phi) rows,
    # |a| <= disturbance * H = 3.2 rows, f in [0.5, 2] cycles per image; energy kept (away from the edges).
    gen = torch.Generator().manual_seed(5)
    x = torch.full((6, 1, 32, 40), -1.0)
    x[:, :, 10] = 0.6
    moved = ClassicAugment(**{**STILL, "doppler_disturbance": 0.1})(x, gen)[:, 0] + 1        # (6, 32, 40)
    rows = torch.arange(32.0)[None, :, None]
    centre = (moved * rows).sum(1) / moved.sum(1)                                           # (6, 40)
    offset = centre - 10
    assert (offset.abs() <= 3.2 + 1e-4).all() and offset.abs().max() > 0.5
    assert torch.allclose(moved.sum(1), torch.full((6, 40), 1.6), atol=1e-5)
    # smooth in time: neighbouring columns differ by at most the sine's largest slope, a 2 pi f / W with f <= 2
    assert (offset.diff(dim=1).abs() <= 3.2 * 2 * math.pi * 2 / 40 + 1e-3).all()
    # the columns of one sample do not all move alike (a drift, not a shift), unlike the frequency shift
    assert (offset.max(1).values - offset.min(1).values).max() > 0.5
    shifted = ClassicAugment(**{**STILL, "doppler_shift": 0.1})(x, gen)[:, 0] + 1
    shift_centre = (shifted * rows).sum(1) / shifted.sum(1)
    assert torch.allclose(shift_centre, shift_centre[:, :1].expand(-1, 40), atol=1e-5)
    with pytest.raises(ValueError, match="doppler_disturbance"):
        ClassicAugment(doppler_disturbance=0.6)


# ----------------------------------------------------------------------------------------------------------------
# Filters
# ----------------------------------------------------------------------------------------------------------------
def test_margin_filter_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.2, 0.6]])
    labels = torch.tensor([0, 0, 2])
    assert torch.allclose(class_margins(probs, labels), torch.tensor([0.5, -0.1, 0.4]))
    assert margin_threshold(torch.tensor([-0.3, 0.2, 0.4, 0.9, 1.0]), 0.5) == pytest.approx(0.4)
    assert margin_threshold(torch.tensor([-0.3, 0.2, 0.4, 0.9, 1.0]), 0.0) == 0.0   # floored at 0
    assert margin_filter(probs, labels, 0.45).tolist() == [True, False, False]


def test_physics_ranges_and_filter_by_hand():
    features = [{"torso_velocity_mps": v, "cadence_steps_per_s": c}
                for v, c in [(1.0, 1.5), (1.2, 1.7), (2.0, 2.0), (2.0, 2.4), (5.0, float("nan"))]]
    labels = [0, 0, 1, 1, 1]
    ranges = physics_ranges(features, labels, 3, tolerance=1.0)
    # Pooled within-person standard deviations: sum of squares about each person's mean / (samples - persons).
    v1 = np.array([2.0, 2.0, 5.0])
    s_v = np.sqrt((0.02 + ((v1 - v1.mean()) ** 2).sum()) / (5 - 2))
    s_c = np.sqrt((0.02 + 0.08) / (4 - 2))                                 # NaN cadence left out
    assert ranges["torso_velocity_mps_pooled_std"] == pytest.approx(s_v)
    assert ranges["cadence_steps_per_s_pooled_std"] == pytest.approx(s_c)
    assert ranges["torso_velocity_mps"][0] == pytest.approx([1.0 - s_v, 1.2 + s_v])
    assert ranges["cadence_steps_per_s"][1] == pytest.approx([2.0 - s_c, 2.4 + s_c])
    assert np.isnan(ranges["torso_velocity_mps"][2]).all()                # person 2 has no real samples
    candidates = [{"torso_velocity_mps": 1.1, "cadence_steps_per_s": 1.6},          # inside person 0
                  {"torso_velocity_mps": 1.1, "cadence_steps_per_s": 1.6 + 1.0},    # cadence too high
                  {"torso_velocity_mps": 1.1, "cadence_steps_per_s": float("nan")},  # not measurable
                  {"torso_velocity_mps": 1.1, "cadence_steps_per_s": 1.6}]          # person 2: no range
    assert physics_filter(candidates, [0, 0, 0, 2], ranges).tolist() == [True, False, False, False]


def test_balanced_indices_repeat_the_rarer_persons_up_to_the_largest_count():
    from ldm.radar.augment import balanced_indices
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2, 0])                    # 5, 1, 2 samples
    order = balanced_indices(labels, torch.Generator().manual_seed(0))
    assert torch.equal(order[:8], torch.arange(8))                      # every sample once, first
    assert torch.bincount(labels[order]).tolist() == [5, 5, 5]
    assert set(order[8:].tolist()) == {4, 5, 6}                         # copies only of persons 1 and 2
    assert torch.equal(balanced_indices(torch.tensor([1, 0, 1, 0]), torch.Generator()), torch.arange(4))
