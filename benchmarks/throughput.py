"""Training throughput: ``sslbench bench`` as a script, for those who look in benchmarks/.

The same command with the same keys (docs/benchmarks.md, "Training throughput"):

    python benchmarks/throughput.py                        # SimCLR, ResNet-18, 32 px, CPU
    python benchmarks/throughput.py method=byol image_size=224 batch_size=256 accelerator=gpu
    python benchmarks/throughput.py rows=sslbench,ceiling steps=50 out=results.jsonl

Prints three rows (sslbench's data path, lightly's per-image transforms in DataLoader
workers, compute only) and the last line ``ratio_vs_lightly=A share_of_ceiling=B``.
"""

from __future__ import annotations

import sys

from sslbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
