#!/usr/bin/env bash
# Short ppo / grpo / srpo runs at the commit before and after the layout change, same flags
# (srpo with its pre-change flag names, which the new CLI renames): same numbers expected.
set -e
common="--tasks button-press-topdown-v3 --env-steps 3000 --eval-every 3000 --env.max-steps 82 --eval-episodes 2 --final-eval-episodes 3 --videos 0 --logger none --no-progress"
for method in grpo ppo srpo; do
  extra="--$method.episodes-per-step 16 --$method.rollout-envs 8 --$method.lr 1e-3"
  [ $method != ppo ] && extra="$extra --$method.group-size 4"
  [ $method = ppo ] && extra="$extra --ppo.critic-warmup-steps 1"
  [ $method = srpo ] && extra="$extra --srpo.frames 4 --srpo.frame-size 32 --srpo.reward.cap 0.5"
  for side in before after; do
    ( cd /tmp/$side/repo && . .venv/bin/activate && vla-rl finetune --method $method $common $extra --output-dir runs/pg_$method > /tmp/work/pg_${side}_$method.log 2>&1 )
    echo "$method $side done"
  done
done
