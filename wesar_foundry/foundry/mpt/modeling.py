"""``WeSaRMPTForCausalLM``: llm-foundry's ``MPTForCausalLM`` with every matrix reparameterized.

MPT builds itself as usual (its blocks, attention, FFNs, norms and RoPE, all from llm-foundry's
registries), then ``placement.place_matrices`` replaces its linear layers and embedding by role
(``core.roles.MPT_ROLES``, after the ``roles`` overrides). The module tree and parameter names stay
MPT's (``transformer.blocks.0.attn.Wqkv.weight``), plus each method's gains (``…Wqkv.alpha``).
Initialization is MPT's own hook, ``param_init_fn``, which calls the ``param_init_fns`` entry
``init_config.name`` names (``wesar_``, ``he``, ``small``) one module at a time, then llm-foundry's
norm init.
"""

from __future__ import annotations

from llmfoundry.layers_registry import norms
from llmfoundry.models.mpt import MPTForCausalLM
from llmfoundry.models.utils.param_init_fns import norm_init
from torch import nn

from wesar_foundry.core.init_targets import init_target_of
from wesar_foundry.core.roles import MPT_ROLES
from wesar_foundry.core.sigma_rule import choose_sigma
from wesar_foundry.foundry.init_fns import plain_matrices_replaced
from wesar_foundry.foundry.mpt.config import WeSaRMPTConfig, check_expressible
from wesar_foundry.models.init import claims
from wesar_foundry.models.llama import ReparamModelMixin
from wesar_foundry.models.placement import Reparameterization, place_matrices


def initialized(module: nn.Module) -> bool:
    """Whether ``param_init_fn`` initializes ``module``'s own parameters: ours, or one of llm-foundry's norms."""
    return claims(module) or isinstance(module, tuple(norms.get(name) for name in norms.get_all()))


class WeSaRMPTForCausalLM(ReparamModelMixin, MPTForCausalLM):
    """MPT with reparameterized matrices (``config.reparam``), each with its role's target std."""

    config_class = WeSaRMPTConfig

    def __init__(self, config: WeSaRMPTConfig):
        check_expressible(config)
        with plain_matrices_replaced():  # MPT initializes its stock matrices here; replaced just below
            super().__init__(config)
        how = Reparameterization(reparam=config.reparam, init_target=init_target_of(config.init_config),
                                 d_model=config.d_model, n_layers=config.n_layers,
                                 gamma_init=config.sigma_reparam_gamma_init,
                                 gate_scale=choose_sigma(config.init_config, width=config.d_model).gate_scale,
                                 multipliers=config.multipliers)
        place_matrices(self, how, MPT_ROLES, config.roles, model_name='wesar_mpt', initialized=initialized)
        self.attach_forward_clock()

    def param_init_fn(self, module: nn.Module) -> None:
        # The registered init (matrices, LayerNorms, RoPE tables), then llm-foundry's own norm init
        # for the norms only it knows (its RMSNorms): weight 1, bias 0, as MPT's stock init does.
        super().param_init_fn(module)
        norm_init(module)
