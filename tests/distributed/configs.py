"""The shipped paper configs shrunk by command-line overrides only (size, sequence, batch,
duration, data = the embedded default): the same overrides for two ranks and for one process."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tests.helpers import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]
# reparam → the 1.3B Rapid YAML of the paper method that uses it.
PAPER_METHOD = {'wesar': 'wesar', 'none': 'small', 'weight_norm': 'weight_norm', 'sigma_reparam': 'sigma_reparam',
                'residual_scaling': 'residual_scaling'}
STEPS = 10
GLOBAL_BATCH = 16


def warmup_tokens(steps: int) -> int:
    return steps * GLOBAL_BATCH * TINY_MODEL['max_seq_len']


def paper_yaml(reparam: str) -> Path:
    return ROOT / 'yamls' / 'pretrain' / '1b' / f'{PAPER_METHOD[reparam]}-rapid.yaml'


def overrides(data: Path, save_folder: Path, run_name: str, world_size: int, *extra: str) -> list[str]:
    """Dotlist overrides shrinking a paper YAML to a CPU run of ``STEPS`` steps."""
    loaders = [f'{loader}.{k}' for loader in ('train_loader', 'eval_loader')
               for k in ('num_workers=0', 'prefetch_factor=null', 'persistent_workers=false', 'pin_memory=false')]
    m = TINY_MODEL
    return [
        f'variables.data_local={data}', f'variables.eval_data_local={data}', f'variables.tokenizer_name={data}/tokenizer',
        f'variables.max_seq_len={m["max_seq_len"]}', f'variables.save_folder={save_folder}', f'save_folder={save_folder}', f'variables.run_name={run_name}',
        f'model.d_model={m["d_model"]}', f'model.n_layers={m["n_layers"]}', f'model.n_heads={m["n_heads"]}',
        f'model.vocab_size={m["vocab_size"]}',
        # CPU: Composer allows only fp32 there, and its FSDP2 meta init hard-codes CUDA.
        'model.init_device=cpu', 'precision=fp32',
        # fp32 parameters in the forward too, for comparisons to 1e-5 (the YAML's dict form gives
        # bf16 under FSDP2 even with precision fp32; the bf16 run keeps it, see conftest).
        'fsdp_config.mixed_precision=FULL',
        # Our tokenizer has its own pad token (the LLaMA tokenizer's <unk> is not in it).
        'tokenizer.kwargs.pad_token=null',
        # Warm-up in tokens, the unit of the YAML's t_max (the full 30B, kept).
        f'max_duration={STEPS}ba', f'scheduler.t_warmup={warmup_tokens(2)}tok', f'global_train_batch_size={GLOBAL_BATCH}',
        # One microbatch per rank and step, in both runs (σReparam steps once per forward).
        f'device_train_microbatch_size={GLOBAL_BATCH // world_size}', 'device_eval_batch_size=8',
        'eval_interval=5ba', 'eval_subset_num_batches=2', 'save_interval=5ba', 'console_log_interval=5ba',
        'callbacks.update_ratio_monitor.interval=2', 'loggers.inmemory={}',
        # Not llm-foundry's default debug: Composer's exit-time debug lines hit pytest's closed streams.
        'python_log_level=info',
        *loaders, *extra,
    ]


def load(reparam: str, dotlist: list[str], yaml: str | None = None) -> DictConfig:
    """``yaml`` (default: the paper YAML of ``reparam``) with the dotlist applied."""
    return OmegaConf.merge(OmegaConf.load(yaml or paper_yaml(reparam)), OmegaConf.from_dotlist(dotlist))
