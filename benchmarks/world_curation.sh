#!/usr/bin/env bash
# The world table of `un2clip curate`: a noisy shapes-world pool pre-trained on (a) raw, (b) ALIGN filters,
# (c) MetaCLIP balancing over the world's attribute phrases, (d) CLIP-score top 30 % by a weak DFN-style filter,
# each the same number of steps and batch; then `un2clip world evaluate` on all four.
# usage: benchmarks/world_curation.sh OUT [STEPS]   (U overrides the command, e.g. U="python -m un2clip.cli";
# PRETRAIN_EXTRA adds pretrain flags, e.g. "--num-workers 8"). 480 steps x batch 256 is ~11.6 min on one CPU thread
# (1.45 s a step measured on a Xeon; 28 s a run on one H200).
set -euo pipefail
O=${1:-runs/curation}; STEPS=${2:-480}; U=${U:-un2clip}; T=${BALANCE_T:-1000}
W=$O/world
[ -f $W/world.json ] || $U world generate $W --seed 0 --n-train 20000 --n-val 1000 --pairs-per-pattern 60 --n-seg 200 \
    --noise-swap 0.2 --noise-boilerplate 0.1 --long-tail 1.0 --n-trusted 2000 --overwrite
POOL=$W/train/captions.csv
# (a) the raw pool is the pool itself; (b) ALIGN's published thresholds, but the world's images are 32 px
$U curate $POOL --output $O/align --filters align --min-side 0 --no-progress
# (c) MetaCLIP: the world's attribute phrases as metadata, t scaled to the pool
$U curate $POOL --output $O/metaclip --metadata $W/metadata.txt --balance-t $T --no-progress
# (d) DFN: a weak filter CLIP trained on 2000 trusted pairs, then the pool's top 30 % by its score
$U train-filter --preset tiny --data $W/trusted/captions.csv --max-steps 200 --batch-size 64 --lr 1e-3 \
    --warmup-steps 20 --lr-schedule cosine --seed 0 --output $O/filter --no-progress \
    --pool $POOL --curate-output $O/score --keep-fraction 0.3
for name in raw align metaclip score; do
  data=$POOL; [ $name = raw ] || data=$O/$name/captions.csv
  $U pretrain --preset tiny --data $data --hard-negatives $W/swap_groups.txt --max-steps $STEPS \
      --batch-size 256 --lr 1e-3 --weight-decay 0.1 --warmup-steps 25 --lr-schedule cosine --save-every 1000 \
      --seed 0 --output $O/clip-$name --no-progress ${PRETRAIN_EXTRA:-}
done
$U world evaluate --model raw=$O/clip-raw align=$O/clip-align metaclip=$O/clip-metaclip score=$O/clip-score \
    --world $W --output $O/eval --no-progress
