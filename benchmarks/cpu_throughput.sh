#!/usr/bin/env bash
# The CPU measurements of docs/benchmarks.md "Training throughput": `sslbench bench` at the
# issue's defaults (SimCLR, ResNet-18, 32 px, batch 128, Fashion-MNIST), with views made in
# a DataLoader worker, and how cost grows with image size and batch. One torch process at a
# time; nothing else on the machine (two on 2 cores slow each other down many times).
#
#   benchmarks/cpu_throughput.sh [OUT.jsonl]      # about 30 minutes on 2 cores
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/throughput_cpu.jsonl}
SSLBENCH=${SSLBENCH:-.venv/bin/sslbench}

echo "== defaults"
$SSLBENCH bench "out=$OUT"
echo "== views in a DataLoader worker"
$SSLBENCH bench data_path=workers num_workers=1 rows=sslbench "out=$OUT"
$SSLBENCH bench data_path=workers num_workers=1 threads=1 rows=sslbench "out=$OUT"
echo "== image size (batch 128)"
for size in 64 128 224; do
    steps=$(( size >= 128 ? 3 : 8 ))
    $SSLBENCH bench "image_size=$size" "steps=$steps" warmup=1 rows=sslbench,lightly "out=$OUT"
done
echo "== batch (32 px)"
for batch in 64 256; do
    $SSLBENCH bench "batch_size=$batch" rows=sslbench,lightly "out=$OUT"
done
