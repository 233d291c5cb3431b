"""lm-eval-routed: token-level SLM+LLM routed decoding for lm-evaluation-harness and EvalPlus.

This module is imported at every Python start-up through the ``.pth`` hook, so it must stay
free of heavy imports (torch, transformers, lm_eval).
"""

__version__ = "0.1.0"
