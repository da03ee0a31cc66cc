#!/usr/bin/env bash
# Training checks that need CUDA, for when a GPU machine is available (run from the repository root,
# with the project installed and a CUDA build of torch):
#   1. tests/test_train_scaling.py: precision, gradient checkpointing and, with two or more GPUs, the
#      two-process DDP equivalence over NCCL (the CPU suite runs the same tests over gloo);
#   2. scripts/gpu_training_check.py: paper-size steps (Qwen2.5-1.5B/3B shapes) against the memory plan.
# Results go to $OUT, else ./gpu_results. Exits non-zero if the tests fail.
set -uo pipefail
RESULTS_DIR="${OUT:-$PWD/gpu_results}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$RESULTS_DIR"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_training_check: torch sees no CUDA device; nothing to check" >&2
    exit 2
fi
gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
selection=()
[ "$gpus" -ge 2 ] || selection=(-k "not two_processes")
"$PYTHON" -m pytest tests/test_train_scaling.py -v -rs -p no:cacheprovider "${selection[@]}" \
    > "$RESULTS_DIR/train_scaling_pytest.log" 2>&1
tests_status=$?
tail -n 3 "$RESULTS_DIR/train_scaling_pytest.log"
"$PYTHON" scripts/gpu_training_check.py --json "$RESULTS_DIR/gpu_training.json" | tee "$RESULTS_DIR/gpu_training.txt"
echo "gpu_training_check: $gpus GPU(s), tests exit $tests_status; results in $RESULTS_DIR"
exit "$tests_status"
