#!/usr/bin/env bash
# The suite's GPU measurements in one command, for a machine with a CUDA device and the
# scientific Python stack (torch, torchvision, numba, pandas, scikit-image, pytest) but maybe
# without this project's pure-Python dependencies. Results go to $OUT (default results/gpu/).
#
# Optional: $GPU_SITE, a folder of extra pure-Python packages (hydra, omegaconf, antlr4,
# imagecorruptions) put on PYTHONPATH, and $GPU_SITE/fashion-mnist, the Debian IDX files,
# copied to /usr/share/datasets/fashion-mnist when missing (the tests' embedded data).
#
#   OUT=/tmp/gpu GPU_SITE=.gpu_site bash scripts/gpu_checks.sh [STEP ...]
#
# Steps (default: all, in this order): resnet50 loading advbn tests jpeg_difference rows.
#
# Each step has its own time limit so that one slow step cannot take the others' figures.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
GPU_SITE=${GPU_SITE:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${GPU_SITE:+:$PWD/$GPU_SITE}${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$GPU_SITE" ] && [ -d "$GPU_SITE/fashion-mnist" ] \
    && [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    mkdir -p /usr/share/datasets && cp -r "$GPU_SITE/fashion-mnist" /usr/share/datasets/
fi

step() {  # step NAME SECONDS COMMAND...: run with a limit, keep the output in $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import platform, torch, torchvision, numba; print('python', platform.python_version(), 'torch', torch.__version__, 'torchvision', torchvision.__version__, 'numba', numba.__version__, 'cpus', __import__('os').cpu_count())"
} 2>&1 | tee "$OUT/environment.txt"

TREE=/tmp/imagenet_c_tree
STEPS=${*:-resnet50 loading advbn tests jpeg_difference rows}
for name in $STEPS; do
    case $name in
    resnet50)
        # ImageNet-C layout, decode + bf16 channels-last ResNet-50 end to end, and the
        # suite's evaluation loop against the bare forward pass.
        step resnet50 200 python3 scripts/benchmark_resnet50.py --device cuda \
            --tree-images 8000 --tree-root "$TREE" --workers 16 ;;
    loading)
        # The suite's JPEG reader against ImageFolder + PIL with the same workers and images.
        step loading_imagenet_c 60 python3 scripts/benchmark_loading.py --dataset imagenet_c \
            --root "$TREE" --images 8000 --workers 16 --device cuda --repeats 2 ;;
    advbn)
        # The AdvBN fine-tuning step against the whole-network re-run.
        step advbn_32px 45 python3 scripts/benchmark_advbn.py --device cuda
        step advbn_resnet50_224px 100 python3 scripts/benchmark_advbn.py --device cuda \
            --model resnet50 --size 224 --split layer1 --batch-size 64 ;;
    tests)
        # The fast test suite with CUDA present: every `auto` device resolves to the GPU. The
        # command-line tests need the rbn-run console script: installed without dependencies.
        python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null \
            2>&1 || echo "rbn-run not installed: the command-line tests will fail"
        step tests_fast 200 python3 -m pytest -q -m "not slow" -p no:cacheprovider \
            --no-header -W ignore::DeprecationWarning tests ;;
    device_tests)
        # Only the tests that change or run with a GPU (CUDA corruption, nvJPEG, bf16 AdvBN).
        step device_tests 150 python3 -m pytest -q -s -p no:cacheprovider --no-header \
            -W ignore::DeprecationWarning tests/test_jpeg_reader.py \
            tests/test_corruptions.py -k "device or context or decode" ;;
    jpeg_difference)
        step jpeg_difference 90 python3 scripts/jpeg_decoder_difference.py --images 1000 ;;
    rows)
        # The embedded default on the GPU, corrupted on the CPU and on the GPU: the rows of
        # each, for comparing the two engines' numbers cell by cell.
        python3 -m robustbench_bn.models.training --install \
            results/fashion_mnist_c/demo_model.pt >/dev/null
        step rows 200 python3 -m robustbench_bn.run -m method=source,bn runner.device=cuda \
            dataset.corruption_device=cpu,cuda display.progress=false \
            hydra.sweep.dir=/tmp/gpu_rows
        python3 - "$OUT/fashion_mnist_c_rows.csv" <<'PYTHON'
import sys
from pathlib import Path

import pandas as pd

rows = pd.concat(pd.read_csv(path) for path in sorted(Path("/tmp/gpu_rows").rglob("rows.csv")))
rows.to_csv(sys.argv[1], index=False)
table = rows.pivot_table(
    index="method", columns="corruption_device", values="accuracy", aggfunc="mean"
)
print("mean accuracy over all cells, by corruption device:")
print(table.round(3).to_string())
cells = rows.pivot_table(
    index=["method", "corruption", "severity"], columns="corruption_device", values="correct"
)
different = int((cells["cpu"] != cells["cuda"]).sum())
print(f"cells with a different correct count: {different} of {len(cells)}")
PYTHON
        ;;
    *) echo "unknown step $name" ;;
    esac
done
