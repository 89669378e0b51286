"""Reparameterized matrices (imports torch and core only): one module per method, one interface (``ReparamMatrix``)."""

from wesar_foundry.reparam.base import PlainMatrix, ReparamMatrix, merge_module, residual_scale
from wesar_foundry.reparam.multipliers import MULTIPLIERS, MultiplierMatrix
from wesar_foundry.reparam.residual_scaling import ResidualScaledMatrix
from wesar_foundry.reparam.sigma_reparam import GAMMA_INITS, ForwardClock, SigmaReparamMatrix
from wesar_foundry.reparam.wesar import WeSaRMatrix
from wesar_foundry.reparam.weight_norm import WeightNormMatrix

REPARAMS = ('wesar', 'none', 'weight_norm', 'sigma_reparam', 'residual_scaling', 'multipliers')

__all__ = [
    'ForwardClock', 'GAMMA_INITS', 'MULTIPLIERS', 'MultiplierMatrix', 'REPARAMS', 'PlainMatrix', 'ReparamMatrix',
    'ResidualScaledMatrix', 'SigmaReparamMatrix', 'WeSaRMatrix', 'WeightNormMatrix', 'merge_module', 'residual_scale',
]
