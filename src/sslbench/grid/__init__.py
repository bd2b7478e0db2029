"""Grids of runs: expanding them, their runs, the local and SLURM launchers, the cost."""
