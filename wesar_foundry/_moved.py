"""Old module paths (before 0.2's layered folders) → where the module lives now, for one release.

A finder on ``sys.meta_path`` answers an old name with the new module itself (the same object, so
``isinstance`` and registries agree) and a FutureWarning naming the new path: FutureWarning rather
than DeprecationWarning because Python shows it to users by default. ``python -m`` on an old path
runs the new module. Remove in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    **{f'wesar_foundry.{m}': f'wesar_foundry.core.{m}'
       for m in ('init_targets', 'sigma_rule', 'roles', 'ratios', 'spikes', 'gate_health', 'divergence', 'options')},
    **{f'wesar_foundry.{m}': f'wesar_foundry.files.{m}' for m in ('atomic', 'remote')},
    **{f'wesar_foundry.{m}': f'wesar_foundry.commands.{m}' for m in ('cli', 'demo', 'eval', 'plot', 'paper')},
    'wesar_foundry.model': 'wesar_foundry.models',
    'wesar_foundry.model.config': 'wesar_foundry.models.llama_config',
    'wesar_foundry.model.modeling': 'wesar_foundry.models.llama',
    'wesar_foundry.model.hf': 'wesar_foundry.models.hf',
    'wesar_foundry.model.init': 'wesar_foundry.models.init',
    'wesar_foundry.model.composer': 'wesar_foundry.foundry.composer_models',
    'wesar_foundry.foundry.loggers': 'wesar_foundry.foundry.jsonl_logger',
    'wesar_foundry.foundry.callbacks.hf_export': 'wesar_foundry.foundry.callbacks.checkpointer',
    'wesar_foundry.foundry.callbacks.mpt_export': 'wesar_foundry.foundry.callbacks.checkpointer',
    'wesar_foundry.foundry.callbacks.update_ratio': 'wesar_foundry.foundry.callbacks.update_ratio_monitor',
    'wesar_foundry.foundry.callbacks.loss_spike': 'wesar_foundry.foundry.callbacks.loss_spike_monitor',
    'wesar_foundry.foundry.callbacks.gate_health': 'wesar_foundry.foundry.callbacks.gate_health_monitor',
    'wesar_foundry.foundry.mpt.export': 'wesar_foundry.foundry.mpt.mpt_adapter',
}


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:
        pass  # the new module ran when it was imported

    def get_code(self, fullname: str):
        # What runpy asks for under ``python -m <old path>``: the new module's code.
        return importlib.util.find_spec(self.new).loader.get_code(self.new)

    def is_package(self, fullname: str) -> bool:
        return importlib.util.find_spec(self.new).submodule_search_locations is not None


class MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        warnings.warn(f'{fullname} moved to {new} in wesar-foundry 0.2; the old path stops working in 0.3',
                      FutureWarning, stacklevel=2)
        found = importlib.util.find_spec(new)
        return importlib.util.spec_from_loader(fullname, _Alias(new),
                                               is_package=found.submodule_search_locations is not None)


def renamed(module: str, names: dict[str, str], namespace: dict):
    """A module ``__getattr__`` answering 0.1's class names (old → new) with a FutureWarning."""
    def __getattr__(name: str):
        if name in names:
            warnings.warn(f'{module}.{name} was renamed {names[name]} in wesar-foundry 0.2; the old name stops '
                          'working in 0.3', FutureWarning, stacklevel=2)
            return namespace[names[name]]
        raise AttributeError(f'module {module!r} has no attribute {name!r}')
    return __getattr__


def install() -> None:
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())  # before PathFinder: an old child path (model.hf) must not load a second copy
