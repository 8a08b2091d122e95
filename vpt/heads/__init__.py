"""Heads; importing this package registers the built-in classification heads."""
from .classification import HeadConfig, LinearHead, MLPHead

__all__ = ["HeadConfig", "LinearHead", "MLPHead"]
