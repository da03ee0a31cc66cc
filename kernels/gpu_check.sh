#!/usr/bin/env bash
# GPU check of advdistill-kernels, for a machine with a CUDA GPU and a CUDA build of torch:
#   1. installs the package (editable, no downloads needed) and, if reachable, Liger-Kernel and
#      cut-cross-entropy for the baseline rows (from $WHEELHOUSE when set, else from PyPI);
#   2. runs tests/kernels (the torch and triton cases are parametrized over device=cuda there,
#      the interpreter cases run too);
#   3. runs the paper-size benchmark (N=8x2048, d=1536, V=151936, bfloat16).
# Results go to $OUT, else ./gpu_results: nvidia-smi.txt, versions.txt, pytest.log, junit.xml,
# bench_paper.txt, bench_paper.csv. Exits non-zero if the tests fail.
set -uo pipefail

KERNELS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$KERNELS_DIR")"
RESULTS_DIR="${OUT:-$PWD/gpu_results}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$RESULTS_DIR"
RESULTS_DIR="$(cd "$RESULTS_DIR" && pwd)"

nvidia-smi > "$RESULTS_DIR/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not found" > "$RESULTS_DIR/nvidia-smi.txt"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch is missing or sees no CUDA device; nothing to check" >&2
    exit 2
fi

"$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e "$KERNELS_DIR" \
    || { echo "gpu_check: installing $KERNELS_DIR failed" >&2; exit 2; }
if [ -n "${WHEELHOUSE:-}" ]; then
    "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" liger-kernel cut-cross-entropy \
        || echo "gpu_check: baselines not installed from $WHEELHOUSE; the benchmark skips them" >&2
else
    "$PYTHON" -m pip install --quiet --retries 0 --timeout 10 liger-kernel cut-cross-entropy \
        || echo "gpu_check: baselines not installed (offline?); the benchmark skips them" >&2
fi

"$PYTHON" - > "$RESULTS_DIR/versions.txt" 2>&1 <<'EOF'
import importlib.metadata as md
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
for name in ("triton", "liger-kernel", "cut-cross-entropy", "advdistill-kernels"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
EOF

cd "$REPO_DIR"
"$PYTHON" -m pytest tests/kernels -v -rs -p no:cacheprovider --junitxml="$RESULTS_DIR/junit.xml" \
    > "$RESULTS_DIR/pytest.log" 2>&1
tests_status=$?
tail -n 3 "$RESULTS_DIR/pytest.log"

"$PYTHON" "$KERNELS_DIR/benchmarks/bench_fused_loss.py" --sizes paper --device cuda --dtypes bfloat16 \
    --providers naive naive_compiled torch triton cce liger --csv "$RESULTS_DIR/bench_paper.csv" \
    > "$RESULTS_DIR/bench_paper.txt" 2>&1
bench_status=$?
cat "$RESULTS_DIR/bench_paper.txt"

echo "gpu_check: tests exit $tests_status, benchmark exit $bench_status; results in $RESULTS_DIR"
exit $(( tests_status != 0 ? tests_status : bench_status ))
