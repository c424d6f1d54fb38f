#!/usr/bin/env bash
# The regression gate: did HEAD get slower than BASE?
#
#     bash benchmarks/compare.sh BASE [HEAD]      # HEAD defaults to the checked-out commit
#
# Builds both commits in asv's virtualenvs (asv.conf.json) and runs `asv continuous` on the
# gated benchmarks only: the ratios measured side by side in one process (each a time over
# a time, so that larger is worse, as asv reads a `track_`) whose run-to-run spread on the
# project's shared 2-core machine stayed at or below 1.18 (FACTOR 1.3 leaves a margin); the
# times of single calls moved by up to 1.46 (training steps) and 1.98 (stream steps), and
# the threads' ratio (WorkersSpeedup) by 1.36, and are left out (docs/benchmarks.md, "The
# regression gate", has the measurements).  Exits 1 exactly when a gated benchmark got
# worse by more than FACTOR (or started failing), 0 otherwise; 2 for a usage error.
# FASTRNN_GATE_FACTOR overrides the factor.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: bash benchmarks/compare.sh BASE [HEAD]" >&2
    exit 2
fi
base=$1
head=${2:-HEAD}
factor=${FASTRNN_GATE_FACTOR:-1.3}
gated='^(bench_rnn\.Speedup\.|bench_networks\.(VariableLengthCost\.track_variable_over_full_length|ExtraLayerCost\.)|bench_generation\.(StreamSpeedup|CellSpeedup)\.|bench_torch\.TorchSpeedup\.)'
asv machine --yes >/dev/null
# asv continuous exits 1 when a benchmark got worse by the factor (and the difference is
# significant where there are samples to tell), 0 when none did.
asv continuous --factor "$factor" --show-stderr --bench "$gated" "$base" "$head"
