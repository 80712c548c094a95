"""onmkd: small dense passage retrievers trained with Online Mutual Knowledge Distillation."""

__version__ = "0.1.0"
