#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run: the core's tests there (the CUDA
# tests included), the dashboard's AppTest suites with the model on the GPU, and
# the GPU section of bench_batch. Logs go to $OUT (default /tmp/gpu-check).
#
#   bash benchmarks/gpu_check.sh
#
# Packages the machine lacks may sit as wheels in .whl/ (git-ignored): they are
# installed into /tmp/site first, with no index. BENCH=0 skips the benchmark.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import sys, torch, torchvision, PIL; print(sys.version.split()[0], torch.__version__, \
torchvision.__version__, PIL.__version__, torch.cuda.get_device_name())"

echo "== core tests on the GPU machine"
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_batch.py tests/test_lens.py \
    tests/test_extractor.py tests/test_models.py tests/test_insights.py >"$OUT/core.log" 2>&1
echo "exit $?"; tail -n 25 "$OUT/core.log"

echo "== dashboard AppTest suites (the model on the GPU)"
timeout 130 python3 -m pytest -q -p no:cacheprovider tests/test_app.py tests/test_sessions.py \
    tests/test_insights_page.py >"$OUT/app.log" 2>&1
echo "exit $?"; tail -n 25 "$OUT/app.log"

[ "${BENCH:-1}" = 1 ] || exit 0
echo "== bench_batch --section gpu"
timeout "${BENCH_SECONDS:-180}" python3 benchmarks/bench_batch.py --section gpu \
    --images "${IMAGES:-16384}" --repeats "${REPEATS:-3}" --jpegs "${JPEGS:-2048}" 2>&1 |
    tee "$OUT/bench.log"
