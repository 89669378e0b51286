"""The gated models as transformers models (imports transformers, reparam and core; no Composer, no llm-foundry).

``reparam_options``: the ``model:`` keys every family shares; ``placement``: the one factory and
the one placement of reparameterized matrices by role; ``llama_config`` and ``llama``:
``wesar_llama``; ``hf``: ``wesar_hf`` (any supported HF decoder); ``init``: one module's initialization.
"""
