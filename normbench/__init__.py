"""normbench: which normalization layer to use, and why, measured."""

__version__ = "0.1.0"
