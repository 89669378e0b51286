"""Composer callbacks registered in llm-foundry's ``callbacks`` registry (see pyproject.toml)."""
