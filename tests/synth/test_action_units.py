"""AU deformations move the right landmarks the right way."""

import numpy as np
import pytest

from emola.labels import AU_LISTS, FABA_SCORED_AUS
from emola.synth.action_units import RENDERED_AUS, apply_action_units
from emola.synth.face_model import MEAN_SHAPE, UPPER_LIDS, LOWER_LIDS


def test_renders_the_whole_faba_label_space():
    assert set(RENDERED_AUS) == set(AU_LISTS["FABA"])
    assert set(FABA_SCORED_AUS) | {7, 9, 15, 20, 23} <= set(RENDERED_AUS)


def _moved(au, value=1.0):
    return apply_action_units(MEAN_SHAPE, {au: value}) - MEAN_SHAPE


@pytest.mark.parametrize("au, points, axis, sign", [
    (1, [21, 22], 1, -1),        # inner brows up
    (2, [17, 26], 1, -1),        # outer brows up
    (4, [21, 22], 1, +1),        # brows down
    (5, [37, 38, 43, 44], 1, -1),  # upper lids up
    (6, [40, 41, 46, 47], 1, -1),  # lower lids pushed up by the cheeks
    (12, [48, 54], 1, -1),       # lip corners up
    (15, [48, 54], 1, +1),       # lip corners down
    (16, [57], 1, +1),           # lower lip down
    (17, [8], 1, -1),            # chin up
    (26, [8, 57], 1, +1),        # jaw down
    (10, [50, 52], 1, -1),       # upper lip up
])
def test_direction(au, points, axis, sign):
    delta = _moved(au)[points, axis]
    assert np.all(np.sign(delta) == sign)


def test_lip_corners_move_outward_for_au12_and_au20():
    for au in (12, 20):
        d = _moved(au)
        assert d[48, 0] < 0 < d[54, 0]


def test_intensity_scales_the_movement():
    assert np.allclose(_moved(12, 0.5), 0.5 * _moved(12, 1.0))


def test_au43_closes_the_eyes_and_lids_never_cross():
    closed = apply_action_units(MEAN_SHAPE, {43: 1.0})
    gap = closed[LOWER_LIDS, 1] - closed[UPPER_LIDS, 1]
    assert np.all(gap > 0) and np.all(gap < 0.01)
    squeezed = apply_action_units(MEAN_SHAPE, {4: 1.0, 7: 1.0, 6: 1.0, 43: 1.0})
    assert np.all(squeezed[LOWER_LIDS, 1] > squeezed[UPPER_LIDS, 1])


def test_jaw_drop_opens_the_mouth():
    open_ = apply_action_units(MEAN_SHAPE, {26: 1.0})
    assert open_[66, 1] - open_[62, 1] > 0.1
