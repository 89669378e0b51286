"""What llm-foundry and Composer see (imports llm-foundry and Composer at module level, and any layer but commands).

``composer_models`` (``wesar_llama``, ``wesar_hf``), ``mpt/`` (``wesar_mpt``), ``init_fns``
(``wesar_``, ``he``, ``small``), ``callbacks/``, ``jsonl_logger``, ``fsdp_check``: each registered
through an entry point in pyproject.toml, so stock ``train.py`` finds it with no ``code_paths``.
"""
