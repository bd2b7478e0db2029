"""The commands beside a run: bench, export, gallery, lightly's reference views."""
