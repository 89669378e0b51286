"""``sigma2: auto``: σ follows the learning rate so that lr/σ stays at the reference's; the gates
keep the reference's relative step through a constant s = (lr_ref/lr)²."""

from __future__ import annotations

import math

import pytest

from wesar_foundry.core.sigma_rule import REFERENCE_LR, REFERENCE_SIGMA2, choose_sigma


def test_a_number_is_used_as_it_is_and_leaves_the_gates_alone():
    c = choose_sigma({'sigma2': 1.6e-4})
    assert (c.sigma2, c.gate_scale, c.auto) == (1.6e-4, 1.0, False)
    assert choose_sigma({}).sigma2 == REFERENCE_SIGMA2  # the paper's default


@pytest.mark.parametrize('lr', [3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
def test_auto_keeps_the_raw_update_ratio_lr_over_sigma_at_the_reference(lr):
    c = choose_sigma({'sigma2': 'auto', 'lr': lr})
    assert lr / c.sigma == pytest.approx(REFERENCE_LR / math.sqrt(REFERENCE_SIGMA2), rel=1e-12)
    # α = s·a moves by s·lr; α itself is ∝ 1/σ ∝ 1/lr: its relative step s·lr·σ is the reference's.
    assert c.gate_scale * lr * c.sigma == pytest.approx(REFERENCE_LR * math.sqrt(REFERENCE_SIGMA2), rel=1e-12)


def test_auto_at_the_reference_lr_is_the_paper_setting():
    c = choose_sigma({'sigma2': 'auto', 'lr': 1e-3})
    assert c.sigma2 == pytest.approx(4e-5, rel=1e-12) and c.gate_scale == pytest.approx(1.0, rel=1e-12)


def test_the_reference_and_the_gate_scale_can_be_set():
    c = choose_sigma({'sigma2': 'auto', 'lr': 2e-3, 'ref_lr': 1e-3, 'ref_sigma2': 1e-4, 'gate_scale': 1})
    assert c.sigma2 == pytest.approx(4e-4) and c.gate_scale == 1.0
    assert c.as_dict() == {'sigma2': c.sigma2, 'gate_scale': 1.0, 'lr': 2e-3, 'ref_lr': 1e-3, 'ref_sigma2': 1e-4}


@pytest.mark.parametrize('init_config, match', [
    ({'sigma2': 'auto'}, r'model.init_config.sigma2: auto needs .* as model.init_config.lr .*lr: \$\{optimizer.lr\}'),
    ({'sigma2': 'auto', 'lr': 0}, r'model.init_config.lr=0 must be a finite number > 0'),
    ({'sigma2': 'auto', 'lr': '1e-3'}, r"model.init_config.lr='1e-3' must be a finite number > 0"),
    ({'sigma2': 'auto', 'lr': 1e-3, 'ref_lr': -1.0}, r'model.init_config.ref_lr=-1.0 must be'),
    ({'sigma2': 'auto', 'lr': 1e-3, 'gate_scale': 'none'}, r"model.init_config.gate_scale='none' must be .*or \"auto\""),
    ({'sigma2': 'automatic'}, r"model.init_config.sigma2='automatic' must be a finite number > 0 \(or \"auto\""),
    ({'sigma2': 4e-5, 'lr': 1e-3}, r'model.init_config.lr is only read with model.init_config.sigma2: auto'),
])
def test_bad_input_is_refused_by_key(init_config, match):
    with pytest.raises(ValueError, match=match):
        choose_sigma(init_config)


@pytest.mark.parametrize('width', [64, 128, 512, 2048])
def test_ref_width_grows_sigma2_with_the_width_so_the_relative_step_shrinks_as_one_over_root_width(width):
    c = choose_sigma({'sigma2': 'auto', 'lr': 3e-3, 'ref_width': 128}, width=width)
    at_ref = choose_sigma({'sigma2': 'auto', 'lr': 3e-3})
    assert c.sigma2 == pytest.approx(at_ref.sigma2 * width / 128, rel=1e-12)
    assert (3e-3 / c.sigma) * math.sqrt(width) == pytest.approx((3e-3 / at_ref.sigma) * math.sqrt(128), rel=1e-12)
    assert c.gate_scale == at_ref.gate_scale  # the gates' constant follows the lr only
    assert c.as_dict()['ref_width'] == 128 and c.as_dict()['width'] == width
    assert 'at width 128, times width' in c.describe()


def test_without_ref_width_the_width_changes_nothing():
    assert choose_sigma({'sigma2': 'auto', 'lr': 3e-3}, width=4096) == choose_sigma({'sigma2': 'auto', 'lr': 3e-3})


@pytest.mark.parametrize('init_config, width, match', [
    ({'sigma2': 'auto', 'lr': 1e-3, 'ref_width': 0}, 64, r'model.init_config.ref_width=0 must be a whole number >= 1'),
    ({'sigma2': 'auto', 'lr': 1e-3, 'ref_width': 128.5}, 64, r'model.init_config.ref_width=128.5 must be a whole'),
    ({'sigma2': 'auto', 'lr': 1e-3, 'ref_width': 128}, None, r'model.init_config.ref_width scales sigma2 with the model width'),
    ({'sigma2': 4e-5, 'ref_width': 128}, 64, r'model.init_config.ref_width is only read with model.init_config.sigma2: auto'),
])
def test_a_bad_ref_width_is_refused_by_key(init_config, width, match):
    with pytest.raises(ValueError, match=match):
        choose_sigma(init_config, width=width)


@pytest.mark.parametrize('width', [64, 256])
def test_a_ref_width_run_is_the_run_whose_ref_sigma2_is_scaled_by_the_width(width):
    """What lets bench/transfer.py read one relative-step grid with and without the rule."""
    ruled = choose_sigma({'sigma2': 'auto', 'lr': 1e-2, 'ref_sigma2': 2e-5, 'ref_width': 128}, width=width)
    plain = choose_sigma({'sigma2': 'auto', 'lr': 1e-2, 'ref_sigma2': 2e-5 * width / 128})
    assert ruled.sigma2 == pytest.approx(plain.sigma2, rel=1e-12) and ruled.gate_scale == plain.gate_scale
