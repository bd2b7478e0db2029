#!/usr/bin/env bash
# The ViT measurements (docs/vit.md, docs/benchmarks.md), to run when a GPU machine is lent,
# after benchmarks/gpu.sh or on its own (about 8 minutes on one H200):
#
#   benchmarks/gpu_vit.sh [OUT_DIR]    # default: $OUT, or ./gpu-bench
#
# 1. `sslbench bench` at ViT-S/16, 224 px, batch 256 on the synthetic imagenette2-160 folder
#    of gpu.sh: DINO and iBOT beside lightly's per-image transforms (DINOTransform,
#    IBOTTransform), MAE (lightly has no transform sslbench builds for it: sslbench's rows),
#    and DINO with backbone.grad_checkpointing=true (the memory it saves, the time it costs);
# 2. 2 epochs of each ViT method at experiment=vit_imagenette's protocol (ViT-S/16, 224 px,
#    batch 256), whose steady epoch gives that experiment's expected time.
#
# Output in OUT_DIR: bench_vit.jsonl, bench_vit.txt, study_time_vit.jsonl and the logs.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu-bench}}
PYTHON=${PYTHON:-python3}
DATA=${DATA:-/tmp/sslbench-synthetic-imagenette2-160}
STEPS=${STEPS:-30}
IMAGES=${IMAGES:-"9469 3925"}
read -r -a EXTRA <<< "${EXTRA:-}"
mkdir -p "$OUT_DIR"
export SSLBENCH_CACHE=${SSLBENCH_CACHE:-/tmp/sslbench-cache}
VIT=(backbone=vit_small_patch16_224 image_size=224 batch_size=256)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu_vit.txt"
# shellcheck disable=SC2086
$PYTHON benchmarks/study_time.py --data "$DATA" --picture 213 160 --images $IMAGES --data-only \
    2>&1 | tee "$OUT_DIR/data_vit.log"

bench() {  # bench NAME KEY=VALUE...
    local name=$1
    shift
    echo "== bench $name: $*" | tee -a "$OUT_DIR/bench_vit.txt"
    $PYTHON -m sslbench bench dataset=folder "dataset.path=$DATA" "${VIT[@]}" "steps=$STEPS" \
        warmup=5 "out=$OUT_DIR/bench_vit.jsonl" "$@" "${EXTRA[@]}" \
        2> "$OUT_DIR/bench-vit-$name.log" | tee -a "$OUT_DIR/bench_vit.txt"
}

bench dino method=dino transform=byol
bench ibot method=ibot transform=byol
bench mae method=mae transform=simclr rows=sslbench
bench dino-checkpointed method=dino transform=byol backbone.grad_checkpointing=true rows=sslbench

# shellcheck disable=SC2086
$PYTHON benchmarks/study_time.py --data "$DATA" --picture 213 160 --images $IMAGES --epochs 2 \
    --methods dino,ibot,mae,simmim,ijepa,lejepa,msn --pipelines "" --runs "$OUT_DIR/runs_vit" \
    --out "$OUT_DIR/study_time_vit.jsonl" "${VIT[@]}" "${EXTRA[@]}" 2>&1 | tail -n 40 \
    > "$OUT_DIR/study_time_vit.log"
cat "$OUT_DIR/study_time_vit.jsonl"
