"""``wesar_mpt``: llm-foundry's MPT with every matrix reparameterized, trained through ``train()``,
resumed, and exported by ``wesar_mpt_hf_checkpointer`` to the stock MPT folder llm-foundry's
``hf_checkpointer`` writes, which plain transformers loads (remote code) with the trained logits."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from llmfoundry.command_utils import train
from llmfoundry.models.mpt import MPTForCausalLM
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import nn

from tests.foundry.callbacks.helpers import logged
from tests.helpers import batch
from wesar_foundry.foundry.callbacks.mpt_export import WeSaRMPTHuggingFaceCheckpointer
from wesar_foundry.foundry.mpt.composer import WeSaRMPTComposerModel
from wesar_foundry.foundry.mpt.gating import place_matrices_
from wesar_foundry.foundry.mpt.export import to_mpt
from wesar_foundry.init_targets import target_std
from wesar_foundry.model.modeling import new_matrix

MPT_YAML = Path(__file__).resolve().parents[2] / 'yamls' / 'tiny' / 'mpt.yaml'
TINY_MPT = {'d_model': 32, 'n_layers': 2, 'n_heads': 2, 'vocab_size': 512, 'max_seq_len': 32}
# What the tiny YAML sets beyond MPT's defaults: every model built here starts from it.
EXPRESSIBLE = {'tie_word_embeddings': False, 'no_bias': True,
               'attn_config': {'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf'}}
INPUT_IDS = batch(seq=24, seed=3)['input_ids']
INITS = {'wesar': {'name': 'wesar_'}, 'none': {'name': 'small'}, 'weight_norm': {'name': 'wesar_', 'sigma2': 16e-5},
         'sigma_reparam': {'name': 'wesar_', 'sigma2': 16e-5}, 'residual_scaling': {'name': 'small'}}


def build(**kwargs) -> WeSaRMPTComposerModel:
    return WeSaRMPTComposerModel(**{**TINY_MPT, **EXPRESSIBLE, **kwargs})


def mpt_cfg(tiny_data, run_name: str, *overrides: str, callbacks: dict | None = None):
    """The shipped tiny MPT YAML, shrunk, on ``tiny_data``, with dotlist overrides."""
    cfg = OmegaConf.load(MPT_YAML)
    cfg.variables.data_local = str(tiny_data)
    cfg.variables.max_seq_len = TINY_MPT['max_seq_len']
    cfg.model.update(TINY_MPT)
    cfg.callbacks, cfg.loggers = callbacks or {}, {'inmemory': {}}
    base = ['eval_interval=5ba', 'eval_subset_num_batches=1', 'global_train_batch_size=8', 'device_train_batch_size=8',
            'device_train_microbatch_size=8', 'device_eval_batch_size=8', 'console_log_interval=100ba',
            'scheduler.t_warmup=2ba', 'optimizer.lr=3e-3', f'run_name={run_name}']
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(base + list(overrides)))


_LOADER = r'''
import json, sys
import torch
from transformers import AutoModelForCausalLM
folder, inputs, out = sys.argv[1:]
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, torch_dtype=torch.float32).eval()
with torch.no_grad():
    logits = model(input_ids=torch.load(inputs)).logits
ours = sorted(m for m in sys.modules if m.split('.')[0] in ('wesar_foundry', 'tests'))
torch.save({'class': type(model).__name__, 'model_type': model.config.model_type, 'logits': logits, 'ours': ours}, out)
'''


def load_in_clean_process(folder: Path, work: Path, inputs: torch.Tensor = INPUT_IDS) -> dict:
    """Load an exported folder with plain transformers (its own remote code) in a fresh, isolated process."""
    work.mkdir(parents=True, exist_ok=True)
    torch.save(inputs, work / 'inputs.pt')
    (work / 'load.py').write_text(_LOADER)
    proc = subprocess.run([sys.executable, '-I', str(work / 'load.py'), str(folder), str(work / 'inputs.pt'),
                           str(work / 'out.pt')], cwd=work, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(work / 'out.pt')


@pytest.fixture(scope='module')
def run(tiny_data, tmp_path_factory):
    """5 batches straight with a Composer checkpoint at ba3; then from that checkpoint to ba5 again,
    with the checkpointer exporting at the end; the export loaded in a clean process."""
    root = tmp_path_factory.mktemp('mpt')
    straight = train(mpt_cfg(tiny_data, 'mpt-straight', 'max_duration=5ba', f'save_folder={root / "ck"}',
                             'save_interval=3ba'))
    exporter = {'wesar_mpt_hf_checkpointer': {'save_folder': str(root / 'hf'), 'save_interval': '5ba'}}
    resumed = train(mpt_cfg(tiny_data, 'mpt-resumed', 'max_duration=5ba', f'load_path={root / "ck" / "ep0-ba3-rank0.pt"}',
                            callbacks=exporter))
    model = resumed.state.model.model.eval()
    with torch.no_grad():
        logits = model(input_ids=INPUT_IDS).logits
    folder = root / 'hf' / 'huggingface' / 'ba5'
    return {'straight': straight, 'resumed': resumed, 'logits': logits, 'folder': folder,
            'loaded': load_in_clean_process(folder, root / 'loader')}


def test_the_model_and_checkpointer_resolve_through_llmfoundry_registries():
    from llmfoundry.registry import callbacks, models
    assert models.get('wesar_mpt') is WeSaRMPTComposerModel
    assert callbacks.get('wesar_mpt_hf_checkpointer') is WeSaRMPTHuggingFaceCheckpointer


def test_training_resumed_from_a_checkpoint_continues_the_uninterrupted_run(run):
    straight, resumed = (logged(run[k], 'loss/train/total') for k in ('straight', 'resumed'))
    # Keyed by the batch count before each step: the resumed run takes steps 4 and 5 only.
    assert sorted(straight) == [0, 1, 2, 3, 4] and all(math.isfinite(v) for v in straight.values())
    assert sorted(resumed) == [3, 4]
    assert [resumed[s] for s in (3, 4)] == pytest.approx([straight[s] for s in (3, 4)], rel=1e-5)


def test_the_export_loads_in_a_clean_process_as_stock_mpt_with_the_trained_logits(run):
    loaded = run['loaded']
    assert (loaded['class'], loaded['model_type']) == ('MPTForCausalLM', 'mpt')
    torch.testing.assert_close(loaded['logits'], run['logits'], rtol=1e-5, atol=1e-6)
    assert loaded['ours'] == []  # nothing of ours was needed to load it


def test_the_export_folder_is_what_hf_checkpointer_writes_for_mpt(run):
    folder = run['folder']
    config = json.loads((folder / 'config.json').read_text())
    assert config['model_type'] == 'mpt' and config['architectures'] == ['MPTForCausalLM']
    assert config['auto_map'] == {'AutoConfig': 'configuration_mpt.MPTConfig',
                                  'AutoModelForCausalLM': 'modeling_mpt.MPTForCausalLM'}
    assert config['attn_config']['attn_impl'] == 'torch' and config['init_config']['name'] == 'kaiming_normal_'
    assert 'reparam' not in config and not config['tie_word_embeddings']
    code = list(folder.glob('*.py'))
    assert {'configuration_mpt.py', 'modeling_mpt.py'} <= {p.name for p in code}
    assert not any('from llmfoundry' in p.read_text() for p in code)  # imports flattened, as for a stock MPT
    assert (folder / 'tokenizer.json').is_file()
    weights = load_file(folder / 'model.safetensors')
    assert not [k for k in weights if not k.endswith(('.weight', '.bias'))]  # merged: no gate left
    assert 'transformer.blocks.0.attn.Wqkv.weight' in weights and 'lm_head.weight' in weights


@pytest.mark.parametrize('reparam', list(INITS))
def test_every_matrix_gets_the_reparameterization_with_its_roles_target_std(reparam):
    model = build(reparam=reparam, init_config=INITS[reparam]).model
    assert model.roles == {
        'transformer.wte': 'emb', 'lm_head': 'head',
        **{f'transformer.blocks.{i}.{m}': r for i in range(2)
           for m, r in (('attn.Wqkv', 'qkv'), ('attn.out_proj', 'o'), ('ffn.up_proj', 'up'), ('ffn.down_proj', 'down'))}}
    assert not [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    target = INITS[reparam]['name'] if INITS[reparam]['name'] != 'wesar_' else 'he'
    for name, m in model.reparam_modules().items():
        want = target_std(m.role, target, 32, 2, m.in_features if m.kind == 'linear' else None)
        got = m.effective_weight().detach().std().item()
        if reparam != 'sigma_reparam':  # σReparam normalizes W: the target has no say
            assert got == pytest.approx(want, rel=0.1), name
        if reparam == 'wesar':
            assert m.alpha.item() == pytest.approx(want / math.sqrt(4e-5), rel=1e-6), name


@pytest.mark.parametrize('layout', [
    {'reparam': 'wesar'},
    {'reparam': 'sigma_reparam', 'init_config': INITS['sigma_reparam'], 'no_bias': False,
     'attn_config': {'attn_impl': 'torch', 'rope': True, 'rope_impl': 'hf', 'fused_qkv': False},
     'ffn_config': {'ffn_type': 'mptglu'}},
    {'reparam': 'weight_norm', 'init_config': INITS['weight_norm'], 'no_bias': False,
     'attn_config': {'attn_impl': 'torch', 'alibi': True}},
    {'reparam': 'wesar', 'init_config': {'name': 'wesar_', 'sigma2': 'auto', 'lr': 1e-2}},
], ids=['wesar-fused-mlp', 'sigma_reparam-unfused-glu-bias', 'weight_norm-alibi-bias', 'wesar-sigma-auto'])
def test_the_merged_stock_mpt_computes_what_the_gated_model_computes(layout):
    model = build(**layout).model
    with torch.no_grad():
        for name, p in model.named_parameters():  # move gates and biases off their init values
            p.mul_(1.0 + 0.1 * torch.randn_like(p)).add_(0.01 if name.endswith('bias') else 0.0)
    model.train()(input_ids=INPUT_IDS)  # a training step of σReparam's power iteration
    model.eval()
    with torch.no_grad():
        want = model(input_ids=INPUT_IDS).logits
        stock = to_mpt(model)
        got = stock(input_ids=INPUT_IDS).logits
    assert type(stock) is MPTForCausalLM and stock.config.model_type == 'mpt'
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_sigma_auto_gives_every_gate_its_constant_and_the_fixed_sigma_function_at_init():
    torch.manual_seed(0)
    fixed = build().model.eval()
    torch.manual_seed(0)
    auto = build(init_config={'name': 'wesar_', 'sigma2': 'auto', 'lr': 1e-2}).model.eval()
    scales = {n: b.item() for n, b in auto.named_buffers() if n.endswith('.gate_scale')}
    assert len(scales) == len(auto.reparam_modules()) and all(v == pytest.approx(0.01) for v in scales.values())
    with torch.no_grad():
        torch.testing.assert_close(auto(input_ids=INPUT_IDS).logits, fixed(input_ids=INPUT_IDS).logits, atol=2e-5, rtol=0)


def test_mpts_default_tied_embedding_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r'tie_word_embeddings=True .*two different gains on one matrix.*'
                                         r'tie_word_embeddings: false'):
        build(tie_word_embeddings=True)


def test_learned_position_embeddings_are_refused_with_the_reason():
    with pytest.raises(ValueError, match=r'learned_pos_emb=True .*transformer\.wpe .*no role'):
        build(attn_config={'attn_impl': 'torch'})


def test_an_ffn_whose_weights_are_not_linear_layers_is_refused():
    with pytest.raises(ValueError, match=r"ffn_type='torch_dmoe' is not allowed .*allowed: mptmlp, mptglu"):
        build(ffn_config={'ffn_type': 'torch_dmoe'})


def test_an_unknown_model_key_is_refused_by_name():
    with pytest.raises(ValueError, match=r'unknown option\(s\) n_layer\b.*allowed: .*reparam'):
        build(n_layer=3)


def test_a_matrix_without_a_role_is_an_error_naming_it():
    model = build().model
    model.transformer.blocks[1].extra = nn.Linear(32, 32)  # as an unknown MPT option might add
    make = lambda rows, cols, role, kind, *, bias, device: new_matrix(  # noqa: E731
        'wesar', rows, cols, role, kind, init_target='he', d_model=32, n_layers=2, bias=bias, device=device)
    with pytest.raises(ValueError, match=r'no role for matrix transformer\.blocks\.1\.extra:'):
        place_matrices_(model, make)


def test_the_shipped_tiny_mpt_yaml_trains_with_its_monitors_and_exports(tiny_data, tmp_path):
    cfg = OmegaConf.load(MPT_YAML)
    cfg.variables.data_local = str(tiny_data)
    cfg.variables.max_seq_len = TINY_MPT['max_seq_len']
    cfg.model.update(TINY_MPT)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([
        'max_duration=2ba', 'eval_interval=2ba', 'eval_subset_num_batches=1', 'global_train_batch_size=8',
        'device_train_batch_size=8', 'device_train_microbatch_size=8', 'device_eval_batch_size=8',
        'callbacks.update_ratio_monitor.interval=1']))
    train(cfg)  # cwd is tmp_path: the YAML's run-name-relative outputs land there
    assert (tmp_path / 'tiny-mpt' / 'hf' / 'huggingface' / 'ba2' / 'model.safetensors').is_file()
    lines = [json.loads(x) for x in (tmp_path / 'tiny-mpt' / 'metrics.jsonl').read_text().splitlines()]
    assert any(any(k.startswith('update_ratio/') for k in line) for line in lines)


def test_a_meta_built_model_initialized_module_by_module_matches_a_cpu_built_one():
    """What Composer's FSDP does with init_device: meta (to_empty, then param_init_fn per module),
    including the bias, llm-foundry's own RMSNorm and the RoPE tables."""
    options = {'no_bias': False, 'norm_type': 'low_precision_rmsnorm'}
    cpu, meta = build(**options).model, build(init_device='meta', **options).model
    assert all(p.is_meta for p in meta.parameters())
    meta.to_empty(device='cpu')
    for module in meta.modules():
        meta.param_init_fn(module)
    for (name, want), (_, got) in zip(cpu.state_dict().items(), meta.state_dict().items()):
        if name.endswith('.weight') and got.dim() == 2:  # a fresh draw: same std, other values
            assert got.std().item() == pytest.approx(want.std().item(), rel=0.1), name
        else:  # gates, biases, norm weights
            assert torch.equal(got, want), name
    torch.testing.assert_close(meta.transformer.rotary_embedding.inv_freq, cpu.transformer.rotary_embedding.inv_freq)
