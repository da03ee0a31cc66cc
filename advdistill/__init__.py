"""AdvDistill: reward-guided distillation of a teacher language model into small students."""

__version__ = "0.1.0"
