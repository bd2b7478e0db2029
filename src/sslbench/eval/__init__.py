"""Evaluating a backbone: frozen-feature probes and kNN, fine-tuning, the online probe."""
