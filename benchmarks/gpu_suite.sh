#!/usr/bin/env bash
# The GPU suite in one device call (benchmarks/gpu_suite.py says what it measures). Two halves:
#
#   bash benchmarks/gpu_suite.sh wheels        # here, where PyPI is reachable: the packages the device
#                                              # machine lacks or has too old, as wheels in .whl/
#   bash benchmarks/gpu_suite.sh run [ARGS]    # there (the `device` tool, carry: [".whl"]): install them
#                                              # beside its own torch, then run the suite into $OUT
#
# The device machine has Python 3.12, torch 2.11 and transformers 5.17 and no network. halp runs on its
# torch (not tried on 2.11 here: a part that fails there fails alone, with its traceback in the output)
# and its tokenizers and hub client, which satisfy transformers 5.23;
# transformers and pydantic travel at the lock's versions.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRIED="transformers pydantic pydantic-core annotated-types typing-inspection"
# benchmarks/peers.py's nnsight and what it imports, beside the lock (never in it): the peers part
PEERS="nnsight==0.8.1 greenlet==3.5.6 websocket-client==1.9.2 zstandard==0.25.0 httpx==0.29.0 httpcore==1.0.9
h11==0.16.0 anyio==4.16.0 sniffio==1.3.1 certifi==2026.10.19.post1 idna==3.20"

locked() {  # the version requirements.lock pins for a package
    grep -i "^$1==" requirements.lock | sed 's/.*==\([^ ]*\).*/\1/'
}

case "${1:-}" in
wheels)
    rm -rf .whl && mkdir .whl
    for spec in $(for name in $CARRIED; do echo "$name==$(locked "$name")"; done) $PEERS; do
        python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 -d .whl "$spec"
    done
    du -sh .whl && ls .whl
    ;;
run)
    shift
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD/src" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
    exec python3 benchmarks/gpu_suite.py "$@"
    ;;
*)
    echo "usage: bash benchmarks/gpu_suite.sh wheels | run [gpu_suite.py arguments]" >&2
    exit 2
    ;;
esac
