"""rsi: scale invariance in the residual stream of ResNet18, reproduced."""

__version__ = "0.1.0"
