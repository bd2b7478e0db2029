#!/usr/bin/env bash
# benchmarks/lightly_reference.py as four processes over disjoint method sets, for a machine
# with one GPU and many cores: one small run leaves the GPU mostly idle and lightly's side is
# bound by its per-image transforms on the CPU. Rows and logs go to OUT_DIR, then the summary.
#
#   benchmarks/lightly_reference_parallel.sh OUT_DIR [lightly_reference.py options ...]
#   benchmarks/lightly_reference_parallel.sh /tmp/ref --seeds 0 1 2 --num-workers 3
# RUNS_ROOT: where sslbench's run folders go (default OUT_DIR/runs); RUN_TIMEOUT: seconds
# after which each process is stopped (its rows so far are kept: seeds are its outer loop).
set -uo pipefail
out=${1:?usage: $0 OUT_DIR [options]}
shift
python=${PYTHON:-python3}
mkdir -p "$out"
# about equal shares of the 17 methods' time (multi-crop and queue runs cost the most)
groups=("simclr barlowtwins simclr_dcl simclr_dclw tico" "simsiam vicreg mocov2 mocov3 nnclr"
        "byol vicregl dino smog" "swav swav_queue fastsiam")
pids=()
for i in "${!groups[@]}"; do
    # shellcheck disable=SC2086  # the method names are meant to split
    ${RUN_TIMEOUT:+timeout "$RUN_TIMEOUT"} "$python" benchmarks/lightly_reference.py \
        --methods ${groups[$i]} --runs-root "${RUNS_ROOT:-$out/runs}_$i" \
        --out "$out/rows_$i.jsonl" "$@" >"$out/log_$i.txt" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=1
done
"$python" benchmarks/lightly_reference.py --summarize "$out"/rows_*.jsonl
exit $status
