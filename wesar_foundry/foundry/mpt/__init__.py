"""llm-foundry's MPT (``mpt_causal_lm``) with reparameterized matrices: the ``wesar_mpt`` model.

``config`` (options and refusals), ``gating`` (roles by module name), ``modeling`` (the HF model),
``composer`` (the registered Composer model), ``export`` (merge into a stock ``MPTForCausalLM``).
"""
