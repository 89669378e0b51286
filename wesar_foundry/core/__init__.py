"""The method's rules as plain functions (imports torch and the standard library only).

Init targets per role, the σ rule, the role tables, update-ratio arithmetic, spike and gate-health
rules, the divergence check, and strict options from YAML mappings: everything above builds on
these, and nothing here knows transformers, Composer or llm-foundry.
"""
