#!/usr/bin/env bash
# Why MAS does not beat one-by-one on all nine tasks of the CPU preset: the runs behind
# experiments/all9_analysis.md. Each block is an ordinary `compare` over a subset of the preset's variants
# with some fit options changed; results land in runs/investigate/<name>/ (finished runs are skipped).
set -euo pipefail
export OMP_NUM_THREADS=1
compare() { python -m mas_lightning compare -c configs/experiments/all9_cpu.yaml "$@"; }

# Split round: split after 3 merged rounds instead of 7 (the groups then train for 7 rounds, not 3).
compare --only='[mas-2]' --out=runs/investigate/split3 \
  --overrides='[--method.init_args.split_round=3, --method.init_args.affinity.window=2]'
# Affinity window: split at 7 as in the preset, but decided from the last 2 rounds instead of 5.
compare --only='[mas-2]' --out=runs/investigate/window2 --overrides='[--method.init_args.affinity.window=2]'
# Training length: twice the rounds, MAS split at 14 of 20 (same proportion as 7 of 10).
compare --only='[one-by-one, all-in-one]' --out=runs/investigate/rounds20 --overrides='[--rounds=20]'
compare --only='[mas-2]' --out=runs/investigate/rounds20 \
  --overrides='[--rounds=20, --method.init_args.split_round=14]'
