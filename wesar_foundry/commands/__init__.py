"""The ``wesar-foundry`` commands (imports any layer, but only inside the subcommand that runs).

``cli`` (the entry point), ``demo``, ``eval`` (+ ``eval_tasks/``, lm-eval's offline task files),
``plot``, ``paper`` (the paper's YAMLs and MosaicML job files), ``tiny`` (+ ``tiny_yamls/``, the CPU train YAMLs).
"""
