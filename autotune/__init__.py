"""autotune: finds the memory configuration for RLHF fine-tuning of a language model.

Heavy libraries (torch, transformers, optuna, mlflow, deepspeed) are imported inside the modules
and commands that need them, so `autotune --help` stays fast.
"""
__version__ = "0.1.0"
