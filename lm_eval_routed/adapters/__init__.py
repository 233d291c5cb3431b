"""Thin translations from lm-eval and EvalPlus to the runtime, and the start-up hook that registers them.

Imported at every Python start-up through the ``.pth`` hook: keep it free of heavy imports.
"""
