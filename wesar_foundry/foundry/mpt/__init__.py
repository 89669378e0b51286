"""llm-foundry's MPT (``mpt_causal_lm``) with reparameterized matrices: the ``wesar_mpt`` model.

``config`` (options and refusals), ``modeling`` (the HF model; its roles: ``core.roles.MPT_ROLES``),
``composer`` (the registered Composer model), ``mpt_adapter`` (merge into a stock ``MPTForCausalLM``).
"""
