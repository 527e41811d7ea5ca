#!/usr/bin/env bash
# Rebuild results/examples/ from the runs of the three shipped sweeps (see results/README.md).
#   normbench run configs/batch_size_sweep.yaml configs/batch_size_sweep_convnet.yaml \
#       configs/groups_sweep.yaml -j 2 --results RUNS_DIR
#   normbench run configs/batch_size_sweep_convnet.yaml -s train.lr_scaling=none \
#       -s name=batch_size_sweep_convnet_constant_lr -j 2 --results RUNS_DIR
#   scripts/make_examples.sh RUNS_DIR
set -euo pipefail
runs=${1:?usage: scripts/make_examples.sh RUNS_DIR}
cd "$(dirname "$0")/.."
nb=${NORMBENCH:-.venv/bin/normbench}
out=results/examples
mkdir -p "$out"
for name in batch_size_sweep batch_size_sweep_convnet batch_size_sweep_convnet_constant_lr; do
  {
    echo "# $name: test error (%) ± 95% CI half-width, by batch size"
    echo
    "$nb" compare --results "$runs" --where "name=$name" --by train.batch_size -f md
    echo
    echo "# $name: each norm against BatchNorm at the same batch size (Welch's t-test over seeds)"
    echo
    "$nb" compare --results "$runs" --where "name=$name" --baseline model.norm.type=batch -f md
  } > "$out/$name.md"
done
{
  echo "# groups_sweep: GroupNorm groups with 10 channels (1 = LayerNorm, 10 = InstanceNorm)"
  echo
  "$nb" compare --results "$runs" --where name=groups_sweep --baseline model.norm.groups=5 -f md
} > "$out/groups_sweep.md"
"$nb" compare --results "$runs" --runs -f csv > "$out/runs.csv"
"$nb" plot --results "$runs" --out "$out"
