"""The WeSaR Llama: gates, init statistics, function at init, meta-device init, Adam invariance."""

from __future__ import annotations

import math
import re

import pytest
import torch

from tests.helpers import TINY_MODEL, batch, build_model
from wesar_foundry.core.init_targets import stored_embedding_std, target_std
from wesar_foundry.reparam import MULTIPLIERS, MultiplierMatrix, PlainMatrix, ReparamMatrix, WeSaRMatrix
from wesar_foundry.reparam.multipliers import VECTORS

SIGMA = math.sqrt(4e-5)
D, N = TINY_MODEL['d_model'], TINY_MODEL['n_layers']


def reparam_modules(composer_model) -> dict[str, ReparamMatrix]:
    return composer_model.model.reparam_modules()


def test_every_matrix_carries_one_fp32_gate_named_alpha():
    model = build_model(mlp_type='swiglu')
    mats = reparam_modules(model)
    # emb + (q, k, v, o, gate, up, down) per layer + head
    assert len(mats) == 2 + 7 * N
    assert {m.role for m in mats.values()} == {'emb', 'q', 'k', 'v', 'o', 'gate', 'up', 'down', 'head'}
    gates = {n: p for n, p in model.named_parameters() if re.search(r'\.alpha$', n)}
    assert len(gates) == len(mats)
    assert all(p.shape == (1,) and p.dtype == torch.float32 and p.requires_grad for p in gates.values())
    assert not [n for n, p in model.named_parameters() if 'alpha' in n and n not in gates]


def test_gelu_mlp_has_two_matrices_and_no_biases():
    model = build_model()
    mlp = model.model.model.layers[0].mlp
    assert not hasattr(mlp, 'gate_proj')
    assert mlp.up_proj.weight.shape == (4 * D, D) and mlp.down_proj.weight.shape == (D, 4 * D)
    assert not [n for n, _ in model.named_parameters() if 'bias' in n]


@pytest.mark.parametrize('mlp_type', ['gelu', 'swiglu'])
def test_the_mlp_computes_the_papers_gelu_or_llamas_swiglu(mlp_type):
    torch.manual_seed(0)
    mlp = build_model(mlp_type=mlp_type).model.model.layers[0].mlp
    x = torch.randn(3, D)
    up, down = mlp.up_proj.effective_weight(), mlp.down_proj.effective_weight()
    if mlp_type == 'gelu':
        want = torch.nn.functional.gelu(x @ up.T) @ down.T  # exact (erf) GeLU
    else:
        assert type(mlp).__name__ == 'LlamaMLP'  # transformers' own module, its matrices placed
        want = (torch.nn.functional.silu(x @ mlp.gate_proj.effective_weight().T) * (x @ up.T)) @ down.T
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), want, rtol=1e-5, atol=1e-6)


def test_raw_weights_have_std_sigma_and_gates_carry_the_target():
    torch.manual_seed(0)
    model = build_model(d_model=128, n_layers=4, n_heads=4, vocab_size=2048)
    mats = reparam_modules(model)
    assert len(mats) == 2 + 6 * 4  # emb, head, (q, k, v, o, up, down) per layer
    for name, m in mats.items():
        assert isinstance(m, WeSaRMatrix)
        assert m.weight.std().item() == pytest.approx(SIGMA, rel=0.05), name
        fan_in = m.in_features if m.kind == 'linear' else None
        assert m.alpha.item() * SIGMA == pytest.approx(target_std(m.role, 'he', 128, 4, fan_in), rel=1e-6), name
    assert model.model.model.embed_tokens.alpha.item() == pytest.approx(1 / SIGMA, rel=1e-6)


@pytest.mark.parametrize('reparam, target', [('wesar', 'he'), ('none', 'he'), ('none', 'small'), ('wesar', 'small')])
def test_embedding_output_has_std_one(reparam, target):
    torch.manual_seed(0)
    model = build_model(d_model=128, vocab_size=2048, reparam=reparam, init_config={'name': 'wesar_', 'target': target})
    emb = model.model.model.embed_tokens(torch.arange(2048))
    assert emb.std().item() == pytest.approx(1.0, rel=0.03)


def test_plain_init_draws_the_targets_directly():
    torch.manual_seed(0)
    model = build_model(d_model=128, n_layers=4, n_heads=4, vocab_size=2048, reparam='none', init_config={'name': 'small'})
    mats = reparam_modules(model)
    assert mats
    for name, m in mats.items():
        assert isinstance(m, PlainMatrix) and not list(m.parameters(recurse=False))[1:]
        if m.role == 'emb':
            assert m.weight.std().item() == pytest.approx(stored_embedding_std('small', 128), rel=0.05)
        else:
            assert m.weight.std().item() == pytest.approx(target_std(m.role, 'small', 128, 4), rel=0.05), name


def copy_effective_weights(src, dst) -> None:
    """Give a plain model ``dst`` the effective weights of ``src``."""
    src_m, dst_m = reparam_modules(src), reparam_modules(dst)
    with torch.no_grad():
        for name, m in dst_m.items():
            m.weight.copy_(src_m[name].merged_weight() / m.scale)


def test_wesar_at_init_computes_exactly_the_he_network():
    torch.manual_seed(0)
    wesar = build_model()
    he = build_model(reparam='none', init_config={'name': 'he'})
    copy_effective_weights(wesar, he)
    b = batch()
    with torch.no_grad():
        assert torch.allclose(wesar(b), he(b), atol=1e-5, rtol=0)


@pytest.mark.parametrize('multipliers', MULTIPLIERS)
def test_multipliers_at_init_compute_wesars_logits_with_fp32_vectors_exactly_where_chosen(multipliers):
    """r = c = 1 at init, so W̄ = α·W is WeSaR's matrix, whose network is the target init's (above)."""
    torch.manual_seed(0)
    wesar = build_model(mlp_type='swiglu')
    torch.manual_seed(0)
    ours = build_model(mlp_type='swiglu', reparam='multipliers', multipliers=multipliers)
    mats, twins = reparam_modules(ours), reparam_modules(wesar)
    assert mats.keys() == twins.keys() and len(mats) == 2 + 7 * N
    for name, m in mats.items():
        assert type(m) is MultiplierMatrix and m.multipliers == multipliers, name
        params = dict(m.named_parameters())
        assert set(params) == {'weight', 'alpha', *VECTORS[multipliers]}, name
        assert torch.equal(m.weight, twins[name].weight) and torch.equal(m.alpha, twins[name].alpha), name
        for v in VECTORS[multipliers]:
            assert params[v].dtype == torch.float32 and torch.equal(params[v], torch.ones_like(params[v])), (name, v)
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(ours(b), wesar(b), rtol=0, atol=1e-6)


@pytest.mark.parametrize('lr', [1e-2, 3e-4])
def test_sigma_auto_draws_the_same_function_at_any_lr(lr):
    """σ is a pure reparameterization: with the same draw, auto's W is lr/lr_ref times the fixed
    σ's and its gates carry the rest, so the logits at init are the paper setting's."""
    torch.manual_seed(0)
    fixed = build_model()
    torch.manual_seed(0)
    auto = build_model(init_config={'name': 'wesar_', 'sigma2': 'auto', 'lr': lr})
    c = lr / 1e-3
    down = auto.model.model.layers[0].mlp.down_proj
    assert down.weight.std().item() == pytest.approx(SIGMA * c, rel=0.05)
    assert down.gain().item() == pytest.approx(reparam_modules(fixed)['model.layers.0.mlp.down_proj'].alpha.item() / c,
                                               rel=1e-6)
    assert down.gate_scale.item() == pytest.approx(1 / c ** 2, rel=1e-6)
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(auto(b), fixed(b), atol=2e-5, rtol=0)
    cfg = auto.model.config.sigma_choice
    assert cfg['lr'] == lr and cfg['sigma2'] == pytest.approx(4e-5 * c ** 2) and cfg['gate_scale'] == pytest.approx(c ** -2)


@pytest.mark.parametrize('builder', ['wesar_llama', 'wesar_hf'])
def test_ref_width_draws_wider_models_at_a_larger_sigma_and_the_same_function(builder):
    """σ² ∝ width / ref_width: at D = 2·ref_width the stored W has √2 times the std, the gates carry
    the rest, and the logits at init are the paper setting's."""
    from tests.helpers import build_hf
    make = build_model if builder == 'wesar_llama' else (lambda **kw: build_hf(**kw))
    ref = {'name': 'wesar_', 'sigma2': 'auto', 'lr': 1e-3}
    torch.manual_seed(0)
    fixed = make(init_config=ref)
    torch.manual_seed(0)
    wide = make(init_config={**ref, 'ref_width': D // 2})
    width = fixed.model.config.hidden_size
    assert width == D  # the tiny size of both builders
    down = wide.model.model.layers[0].mlp.down_proj
    assert down.weight.std().item() == pytest.approx(SIGMA * math.sqrt(2), rel=0.05)
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(wide(b), fixed(b), atol=2e-5, rtol=0)
    assert wide.sigma_choice.sigma2 == pytest.approx(8e-5) and wide.sigma_choice.width == D


def test_gates_are_cast_to_the_activation_dtype():
    model = build_model()
    model.model.to(torch.bfloat16)
    for m in reparam_modules(model).values():
        m.alpha.data = m.alpha.data.float()  # fp32 masters, bf16 weights, as under mixed precision
    with torch.no_grad():
        logits = model(batch())
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def meta_then_per_module_init(**model_kwargs):
    """What Composer's FSDP does: build on meta, then per module ``to_empty`` + ``param_init_fn``."""
    model = build_model(init_device='meta', **model_kwargs)
    hf = model.model
    params = list(hf.parameters())
    assert params and all(p.is_meta for p in params)
    for module in hf.modules():
        owned = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
        if any(t.is_meta for t in owned):
            module.to_empty(device='cpu', recurse=False)
            hf.param_init_fn(module)
    return model


@pytest.mark.parametrize('mlp_type', ['gelu', 'swiglu'])
def test_meta_device_init_equals_eager_init_in_distribution(mlp_type):
    kwargs = dict(d_model=128, n_layers=4, n_heads=4, vocab_size=2048, mlp_type=mlp_type)
    torch.manual_seed(1)
    eager = build_model(**kwargs)
    torch.manual_seed(2)
    meta = meta_then_per_module_init(**kwargs)
    assert not [n for n, t in list(meta.named_parameters()) + list(meta.named_buffers()) if t.is_meta]
    eager_m, meta_m = reparam_modules(eager), reparam_modules(meta)
    assert meta_m.keys() == eager_m.keys() and meta_m
    for name, m in meta_m.items():
        assert m.alpha.item() == eager_m[name].alpha.item(), name
        assert m.weight.std().item() == pytest.approx(eager_m[name].weight.std().item(), rel=0.08), name
        assert m.weight.mean().abs().item() < 0.1 * SIGMA, name
    buffers = list(zip(eager.model.named_buffers(), meta.model.named_buffers()))
    assert buffers
    for (name, a), (_, b) in buffers:
        assert torch.equal(a, b), name  # RoPE tables
    norms = [p for n, p in meta.named_parameters() if 'norm' in n]
    assert norms and all(torch.equal(p, torch.ones_like(p)) for p in norms)
    with torch.no_grad():
        assert torch.isfinite(meta(batch())).all()


def test_adam_update_of_raw_weights_does_not_depend_on_how_the_scale_is_split():
    """Two WeSaR models computing the same function, σ differing 10×, gates frozen: the first Adam
    step moves every raw weight by the same ΔW (up to Adam's ε)."""
    torch.manual_seed(0)
    a = build_model(init_config={'name': 'wesar_', 'sigma2': 4e-5})
    b = build_model(init_config={'name': 'wesar_', 'sigma2': 4e-3})
    k = 10.0  # σ_b / σ_a
    with torch.no_grad():
        for name, mb in reparam_modules(b).items():
            ma = reparam_modules(a)[name]
            mb.weight.copy_(ma.weight * k)
            mb.alpha.copy_(ma.alpha / k)
    x = batch()
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-5)
    deltas = []
    for model in (a, b):
        gates = [p for n, p in model.named_parameters() if n.endswith('alpha')]
        for p in gates:
            p.requires_grad_(False)
        weights = [p for n, p in model.named_parameters() if not n.endswith('alpha')]
        before = [p.detach().clone() for p in weights]
        opt = torch.optim.Adam(weights, lr=1e-3, eps=1e-12)
        model.loss(model(x), x)['total'].backward()
        opt.step()
        # Adam's first step is ±lr·g/(|g|+ε): the gradient's scale (here α) cancels out.
        deltas.append({n: (p.detach() - w0) for (n, p), w0 in zip(
            [(n, p) for n, p in model.named_parameters() if not n.endswith('alpha')], before)})
    mats = reparam_modules(a)
    assert mats
    checked = 0
    for name in mats:
        da, db = deltas[0][f'model.{name}.weight'], deltas[1][f'model.{name}.weight']
        assert torch.allclose(da, db, atol=1e-6 * 1e-3 * 100, rtol=1e-4), name
        checked += 1
    assert checked == len(mats)


def _checkpointed(model, impl: str | None):
    """The model with its decoder layers wrapped by torch's checkpoint wrapper, as Composer does."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
        CheckpointImpl, apply_activation_checkpointing, checkpoint_wrapper,
    )
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    if impl is not None:
        how = CheckpointImpl.REENTRANT if impl == 'reentrant' else CheckpointImpl.NO_REENTRANT
        apply_activation_checkpointing(model, checkpoint_wrapper_fn=lambda m: checkpoint_wrapper(m, checkpoint_impl=how),
                                       check_fn=lambda m: isinstance(m, LlamaDecoderLayer))
    return model


def _sigma_step(impl: str | None, steps: int = 3):
    """Loss, σ's, gradients and singular vectors of a few training steps of a σReparam model."""
    torch.manual_seed(0)
    model = build_model(reparam='sigma_reparam', init_config={'name': 'wesar_', 'sigma2': 16e-5})
    hf = _checkpointed(model.model, impl).train()
    opt = torch.optim.SGD(hf.parameters(), lr=0.5)
    out = []
    for step in range(steps):
        b = batch(seed=step)
        opt.zero_grad()
        loss = model.loss(model.forward(b), b)['total']
        loss.backward()
        mats = {n.replace('._checkpoint_wrapped_module', ''): m for n, m in hf.named_modules()
                if isinstance(m, ReparamMatrix)}
        out.append({
            'loss': loss.detach(),
            'sigma': {n: m.sigma_max().detach() for n, m in mats.items()},
            'grad': {n: m.weight.grad.clone() for n, m in mats.items()},
            'u': {n: m.u.clone() for n, m in mats.items()},
        })
        opt.step()
    return out


@pytest.mark.parametrize('impl', ['reentrant', 'non_reentrant'])
def test_sigma_reparam_runs_the_same_algorithm_under_activation_checkpointing(impl):
    """One power-iteration step per training forward, not one per (re)computation: the σ in the
    loss and in the gradient are the same with and without checkpointing."""
    plain, ckpt = _sigma_step(None), _sigma_step(impl)
    assert len(plain) == len(ckpt) == 3
    for step, (a, b) in enumerate(zip(plain, ckpt)):
        assert torch.allclose(a['loss'], b['loss'], rtol=1e-6, atol=0), step
        assert a['grad'].keys() == b['grad'].keys() and a['grad']
        for name in a['grad']:
            assert torch.allclose(a['u'][name], b['u'][name], rtol=1e-6, atol=1e-7), (step, name)
            assert torch.allclose(a['sigma'][name], b['sigma'][name], rtol=1e-6, atol=0), (step, name)
            assert torch.allclose(a['grad'][name], b['grad'][name], rtol=1e-5, atol=1e-9), (step, name)


def test_sigma_reparam_steps_once_per_training_forward_and_never_in_eval():
    model = build_model(reparam='sigma_reparam', init_config={'name': 'wesar_', 'sigma2': 16e-5})
    q = model.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        q.weight.mul_(1.5).add_(0.01 * torch.randn_like(q.weight))  # stale vectors, as after an update
    u0 = q.u.clone()
    model.eval()
    with torch.no_grad():
        model.forward(batch())
    assert torch.equal(q.u, u0)
    model.train()
    model.forward(batch())
    u1 = q.u.clone()
    assert not torch.equal(u1, u0)
    q.forward(torch.randn(2, D))  # a recompute within the same forward: no second step
    assert torch.equal(q.u, u1)
