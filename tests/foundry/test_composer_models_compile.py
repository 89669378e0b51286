"""``compile_config`` (Composer's torch.compile) trains every reparameterization as eager does.

The suite compiles with ``backend: aot_eager``: dynamo's tracing (where graph breaks happen) and
AOTAutograd (which traces our custom backward and functionalizes σReparam's in-place updates of
its singular vectors) run as with the default inductor backend; only inductor's code generation,
minutes per model on this CPU, is left to ``bench/compile.py``, which runs the default backend.
"""

from __future__ import annotations

import pytest
import torch._dynamo
from llmfoundry.command_utils import train
from torch._dynamo.utils import counters

from tests.helpers import INITS, losses

# Every test here trains twice, eager and compiled.
pytestmark = pytest.mark.slow


@pytest.mark.parametrize('reparam', list(INITS))
def test_compiled_training_gives_eager_losses_with_no_graph_break(train_cfg, reparam):
    model = {'reparam': reparam, 'init_config': INITS[reparam]}
    base = ('max_duration=5ba', 'eval_interval=100ba', 'optimizer.lr=3e-3')
    eager = losses(train(train_cfg(*base, **model)))
    torch._dynamo.reset()
    counters.clear()
    compiled = losses(train(train_cfg(*base, 'compile_config={backend: aot_eager}', **model)))
    # It did compile, and once: σReparam's step counter once made it recompile on every step.
    assert 1 <= counters['stats']['unique_graphs'] <= 3
    assert dict(counters['graph_break']) == {}
    assert compiled == pytest.approx(eager, rel=1e-5)
