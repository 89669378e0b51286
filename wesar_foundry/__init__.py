"""wesar-foundry: WeSaR (Nishida et al., EMNLP 2024) as an llm-foundry / Composer plugin.

Layers, lowest first; each folder's docstring says what it may import, and tests/test_layers.py
holds it to that:

- ``core/``      the rules (init targets, σ rule, role tables, update ratios, spikes, gate health): torch + stdlib
- ``files/``     write-then-rename outputs and object stores: stdlib
- ``reparam/``   one module per reparameterization: torch + core
- ``models/``    the gated transformers models and the placement of their matrices: + transformers
- ``export/``    Composer checkpoint → merged stock Hugging Face checkpoint: + files
- ``data/``      corpus → tokenizer → MDS datasets
- ``foundry/``   what llm-foundry and Composer load: models, init functions, callbacks, logger, MPT
- ``commands/``  the ``wesar-foundry`` command line

llm-foundry finds the models, init functions, callbacks and logger through entry points (see
pyproject.toml). Importing this package registers nothing; it only lets the module paths of
0.1 resolve, with a warning, for one release (``_moved``).
"""

from wesar_foundry import _moved

_moved.install()

__version__ = '0.2.0'
