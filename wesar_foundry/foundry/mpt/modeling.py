"""``WeSaRMPTForCausalLM``: llm-foundry's ``MPTForCausalLM`` with every matrix reparameterized.

MPT builds itself as usual (its blocks, attention, FFNs, norms and RoPE, all from llm-foundry's
registries), then ``place_matrices_`` replaces its linear layers and embedding by role. The module
tree and parameter names stay MPT's (``transformer.blocks.0.attn.Wqkv.weight``), plus each method's
gains (``…Wqkv.alpha``). Initialization is MPT's own hook, ``param_init_fn``, which calls the
``param_init_fns`` entry ``init_config.name`` names (``wesar_``, ``he``, ``small``) one module at a time.
"""

from __future__ import annotations

from llmfoundry.models.mpt import MPTForCausalLM
from llmfoundry.models.utils.param_init_fns import norm_init
from torch import nn

from wesar_foundry.foundry.init_fns import plain_matrices_replaced
from wesar_foundry.foundry.mpt.config import WeSaRMPTConfig, check_expressible
from wesar_foundry.foundry.mpt.gating import place_matrices_
from wesar_foundry.model.modeling import ReparamModelMixin, new_matrix
from wesar_foundry.sigma_rule import choose_sigma


class WeSaRMPTForCausalLM(ReparamModelMixin, MPTForCausalLM):
    """MPT with reparameterized matrices (``config.reparam``), each with its role's target std."""

    config_class = WeSaRMPTConfig

    def __init__(self, config: WeSaRMPTConfig):
        check_expressible(config)
        with plain_matrices_replaced():  # MPT initializes its stock matrices here; replaced just below
            super().__init__(config)

        def make(rows: int, cols: int, role: str, kind: str, *, bias: bool, device) -> nn.Module:
            return new_matrix(config.reparam, rows, cols, role, kind, init_target=config.init_target,
                              d_model=config.d_model, n_layers=config.n_layers,
                              gamma_init=config.sigma_reparam_gamma_init, bias=bias, device=device,
                              gate_scale=choose_sigma(config.init_config).gate_scale)

        self.roles = place_matrices_(self, make)
        self.attach_forward_clock()

    def param_init_fn(self, module: nn.Module) -> None:
        # The registered init (matrices, LayerNorms, RoPE tables), then llm-foundry's own norm init
        # for the norms only it knows (its RMSNorms): weight 1, bias 0, as MPT's stock init does.
        super().param_init_fn(module)
        norm_init(module)
