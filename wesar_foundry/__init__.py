"""wesar-foundry: WeSaR (Nishida et al., EMNLP 2024) as an llm-foundry / Composer plugin.

llm-foundry finds the model, init functions and callbacks through entry points (see
pyproject.toml); importing this package registers nothing by side effect except the
``wesar_llama`` model type with transformers' Auto classes.
"""

__version__ = '0.1.0'
