"""Entry points make every name our YAMLs use visible to llm-foundry's registries."""

import os
import subprocess
import sys

from wesar_foundry.foundry import init_fns
from wesar_foundry.model.composer import WeSaRComposerModel


def test_model_and_init_functions_resolve_through_llmfoundry_registries():
    from llmfoundry import registry
    assert registry.models.get('wesar_llama') is WeSaRComposerModel
    for name in ('wesar_', 'he', 'small'):
        assert registry.param_init_fns.get(name) is getattr(init_fns, name)


def test_llmfoundry_cli_finds_the_model():
    out = subprocess.run([sys.executable, '-m', 'llmfoundry.cli.cli', 'registry', 'find', 'models', 'wesar_llama'],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, 'COLUMNS': '400'})  # rich truncates to the terminal width
    assert out.returncode == 0, out.stderr
    assert 'wesar_foundry.model.composer' in out.stdout
