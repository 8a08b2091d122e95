"""Heads: each module registers its kinds with ``HEADS.register``; ``vpt.registry.HEADS`` imports every module
of this package on its first lookup."""
from .classification import HeadConfig, LinearHead, MLPHead

__all__ = ["HeadConfig", "LinearHead", "MLPHead"]
