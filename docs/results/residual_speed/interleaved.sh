#!/usr/bin/env bash
# Residual RL env steps/s before and after the learner changes of 16e52d9 (issue 15), same run
# command, same machine, interleaved ABAB. "before" puts the two files that commit changed back to
# their c31b068 versions for the run, then restores them (checked at the end).
#   bash docs/results/residual_speed/interleaved.sh /tmp/residual_speed
set -euo pipefail
out=${1:-/tmp/residual_speed}
# It rewrites tracked files while it runs: a commit meanwhile would take the old versions in.
git diff --quiet -- vla_rl || { echo "uncommitted changes under vla_rl/: commit first" >&2; exit 1; }
rm -rf "$out" && mkdir -p "$out"
files="vla_rl/rl/critics.py vla_rl/methods/residual/learner.py"
run() {  # $1: label
  vla-rl finetune --method residual --tasks button-press-topdown-v3 --env-steps 6000 \
    --eval-every 100000 --eval-episodes 1 --final-eval-episodes 1 --videos 0 --logger none \
    --no-progress --output-dir "$out/$1" > "$out/$1.log" 2>&1
  python -c "import json; r = json.load(open('$out/$1/results.json')); print('$1', r['env_steps'], r['updates'], r['train_wall_s'], round(r['env_steps'] / r['train_wall_s'], 1), 'env steps/s')"
}
for round in 1 2; do
  for f in $files; do git show c31b068:$f > $f; done
  run before_$round
  git checkout -- $files
  run after_$round
done
git diff --exit-code -- $files && echo "files restored"
