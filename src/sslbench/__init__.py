"""sslbench: pretrain, evaluate and compare self-supervised vision models."""

__version__ = "0.1.0"
