#!/usr/bin/env bash
# npm run bench -- [null|raw|qcow2|all] [--tcp] [--repeat N] ...: the shared side-by-side
# benchmark (../shared/bench/vs-qsd.sh), with its scratch images (several GiB) removed afterwards.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
export BENCH_DIR=${BENCH_DIR:-$(mktemp -d /tmp/vs-qsd.XXXXXX)}
trap 'rm -rf "$BENCH_DIR"' EXIT
cd "$root"
bash "$root/../shared/bench/vs-qsd.sh" "$@"
