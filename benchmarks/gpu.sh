#!/usr/bin/env bash
# The GPU measurements of the speed work (docs/benchmarks.md, "Training throughput"), one
# script to run as soon as a GPU machine is lent (about 5 minutes on one H200):
#
#   benchmarks/gpu.sh [OUT_DIR]        # default: $OUT, or ./gpu-bench
#
# 1. `sslbench bench` (sslbench's data path / lightly's per-image transforms in DataLoader
#    workers / compute only) for SimCLR, BYOL and VICRegL, ResNet-18, 224 px, batch 256, on
#    a synthetic folder of imagenette2-160's size (9,469 train JPEGs of 213x160): each
#    method's lightly transform (SimCLRTransform, BYOLTransform, VICRegLTransform);
# 2. the same for SimCLR with compile=default and with data_path=dataloader (what holding
#    the images on the device buys);
# 3. a timed 2-epoch run of SimCLR at the study's protocol (224 px, batch 256) on that
#    folder, with the 200-epoch projection (first epoch + 199 steady epochs).
#
# Everything lands in OUT_DIR: bench.jsonl (one JSON line per bench), bench.txt (the printed
# tables), study_time.jsonl, and the logs. Python: $PYTHON, else python3 (PYTHONPATH may
# point at a carried site-packages). Nothing here is needed by the tests.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu-bench}}
PYTHON=${PYTHON:-python3}
DATA=${DATA:-/tmp/sslbench-synthetic-imagenette2-160}
STEPS=${STEPS:-30}
IMAGES=${IMAGES:-"9469 3925"}  # train and test pictures of the synthetic folder
# More KEY=VALUE for every bench and run (a CPU smoke test: EXTRA="image_size=32 batch_size=16")
read -r -a EXTRA <<< "${EXTRA:-}"
mkdir -p "$OUT_DIR"
export SSLBENCH_CACHE=${SSLBENCH_CACHE:-/tmp/sslbench-cache}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
nproc | tee -a "$OUT_DIR/gpu.txt"

# The synthetic folder (about 20 s on 16 cores).
# shellcheck disable=SC2086
$PYTHON benchmarks/study_time.py --data "$DATA" --picture 213 160 --images $IMAGES --data-only \
    2>&1 | tee "$OUT_DIR/data.log"

bench() {  # bench NAME KEY=VALUE...
    local name=$1
    shift
    echo "== bench $name: $*" | tee -a "$OUT_DIR/bench.txt"
    $PYTHON -m sslbench bench dataset=folder "dataset.path=$DATA" backbone=resnet18 \
        image_size=224 batch_size=256 "steps=$STEPS" warmup=5 "out=$OUT_DIR/bench.jsonl" "$@" \
        "${EXTRA[@]}" \
        2> "$OUT_DIR/bench-$name.log" | tee -a "$OUT_DIR/bench.txt"
}

bench simclr method=simclr transform=simclr
bench byol method=byol transform=byol
bench vicregl method=vicregl transform=simclr
bench simclr-compiled method=simclr transform=simclr compile=default
bench simclr-dataloader method=simclr transform=simclr data_path=dataloader rows=sslbench

# A study run's time: 2 epochs, then the 200-epoch projection.
# shellcheck disable=SC2086
$PYTHON benchmarks/study_time.py --data "$DATA" --picture 213 160 --images $IMAGES --epochs 2 \
    --methods simclr --pipelines "" --runs "$OUT_DIR/runs" --out "$OUT_DIR/study_time.jsonl" \
    image_size=224 "${EXTRA[@]}" 2>&1 | tail -n 40 > "$OUT_DIR/study_time.log"
cat "$OUT_DIR/study_time.jsonl"
