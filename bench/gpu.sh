#!/usr/bin/env bash
# GPU checks and figures through the `device` tool, whose machine has torch (and scikit-learn,
# matplotlib, pytest) but not lrtune's other dependencies, and no network.
#
#   here:           bash bench/gpu.sh wheels   # those dependencies as wheels into .whl/ (ignored)
#   on the device:  bash bench/gpu.sh check    # install them; CUDA tests and a worker smoke test
#                   bash bench/gpu.sh bench ARGS...   # bench/fused.py --device cuda ARGS...
#
# Through the tool: run(command="bash bench/gpu.sh check", carry=[".whl"]), then e.g.
# run(command="bash bench/gpu.sh bench --tasks digits-mlp --ks 1,16,256,1024 --epochs 3",
#     carry=[".whl"]). Results go to $OUT (fused.jsonl, the plot), which comes back here.
set -euo pipefail
cd "$(dirname "$0")/.."

# what the worker, the tests' conftest and bench/fused.py import beyond the device's image
PACKAGES=(optuna optuna-dashboard bottle colorlog alembic Mako SQLAlchemy pydantic pydantic_core
          pydantic-settings annotated-types typing-inspection typing_extensions python-dotenv
          psycopg psycopg-binary)
PYTHON_VERSION=3.12  # the device image's python3
# a rehearsal here: PYTHON=.venv/bin/python DEVICE=cpu NO_INSTALL=1 bash bench/gpu.sh check
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}

install() {
    if [ -z "${NO_INSTALL:-}" ]; then
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site:$PWD"
    fi
    export PYTHONUNBUFFERED=1
    "$PYTHON" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available() and
torch.cuda.get_device_name())"
}

case "${1:-}" in
    wheels)
        pins=()
        for name in "${PACKAGES[@]}"; do
            pin=$(.venv/bin/python -m pip freeze | grep -i "^${name}==" || true)
            pins+=("${pin:-$name}")  # the version CI tests, where the venv has one
        done
        rm -rf .whl && mkdir .whl
        .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d .whl \
            --python-version "$PYTHON_VERSION" --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 "${pins[@]}"
        du -sh .whl
        ;;
    check)
        install
        out="${OUT:-/tmp/out}"
        mkdir -p "$out"
        "$PYTHON" -m pytest -q --noconftest -p no:cacheprovider \
            tests/worker/test_train.py tests/worker/test_fused.py -k "cuda"
        # a packed study through the real worker loop on the GPU (SQLite; no API here)
        export LRTUNE_DATABASE_URL="sqlite:////tmp/gpu-smoke.db"
        rm -f /tmp/gpu-smoke.db
        "$PYTHON" - <<'PY'
from lrtune.settings import Settings
from lrtune.spec import StudySpec
from lrtune.store import Store

Store(Settings()).create_study(StudySpec(
    name="gpu-smoke", task="digits-mlp", epochs=5, n_trials=64, pack=32,
    sampler={"name": "tpe", "seed": 0}), "gpu.sh")
PY
        time "$PYTHON" -c "from lrtune.cli import app; app()" worker --device "$DEVICE" \
            --exit-when-idle 2>&1 | tee "$out/worker.log" | tail -8
        "$PYTHON" - <<'PY' | tee "$out/smoke.txt"
from collections import Counter

import optuna

from lrtune.settings import Settings
from lrtune.store import sqlalchemy_url

storage = sqlalchemy_url(Settings().connection_url())
for summary in optuna.get_all_study_summaries(storage):
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    states = Counter(t.state.name for t in study.trials)
    print(summary.study_name, dict(states), "best", study.best_value)
PY
        ;;
    bench)
        shift
        install
        out="${OUT:-/tmp/out}"
        mkdir -p "$out"
        "$PYTHON" bench/fused.py --device "$DEVICE" --out "$out/fused.jsonl" "$@"
        ;;
    *)
        sed -n 2,10p "$0"
        exit 2
        ;;
esac
