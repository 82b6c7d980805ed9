#!/usr/bin/env bash
# The papers' protocol: SOM on 5 MuJoCo -v4 tasks, NC-LQL on 6, 5 seeds each, the scripts' defaults.
#
#   ./runs.sh                     run every job locally, WORKERS at a time (default 1)
#   WORKERS=4 ./runs.sh           four at a time
#   ./runs.sh --dry-run           print the commands, run nothing
#   ./runs.sh --slurm             write ./runs_slurm.sbatch (one array task per command; RUNS_CPUS, RUNS_GPUS, RUNS_TIME,
#                                 RUNS_PARTITION, RUNS_ACCOUNT set its requests; runs under RUNS_DIR, default runs/)
#   ./runs.sh quick [--dry-run]   the CPU-sized set of docs/results.md (hours on a laptop, not days)
#   ./runs.sh release [--dry-run] Hopper-v4 beside the authors' NC-LQL release: the protocol's defaults, seed 100,
#                                 90,000 transitions, 20 eval episodes every 7,500 (docs/results.md)
#   ./runs.sh long [--dry-run]    the longest runs of docs/results.md: HalfCheetah-v4, then Hopper-v4, both scripts, the
#                                 protocol's defaults, --compile, seed 100, checkpoints every 15,000 transitions;
#                                 LONG_STEPS (default 150000) transitions; extend one with
#                                 python som.py --resume runs/<run>/checkpoint.pt --total-timesteps <more>
#   ./runs.sh probe [--dry-run]   the studies of docs/som_studies.md: SOM's actor probes and bandit runs, the bandit figure's
#                                 runs, LQL's step-size sweep, SOM's alpha check on Hopper-v4
#   ./runs.sh vs_sac [--dry-run]  HalfCheetah-v4 and Hopper-v4, seeds 1 and 2, 30,000 steps at the CPU settings: SOM
#                                 (collecting with best-of-32 and with N = 1), NC-LQL and Stable-Baselines3's SAC
#                                 (scripts/sac_baseline.py, requirements-bench.txt)
#   ./runs.sh five_tasks [--dry-run]  HalfCheetah-v4, Hopper-v4, Walker2d-v4, Ant-v4, Humanoid-v4, seeds 1-3 (SEEDS),
#                                 30,000 steps at vs_sac's CPU settings: SAC, SOM and NC-LQL with their defaults
#                                 (docs/results.md; records in results/five_tasks/)
#   ./runs.sh target_screen       SOM's target forms on HalfCheetah-v4 seed 1 beside the five-task default (som_studies.md)
#   ./runs.sh smoke [--dry-run]   each script and SAC on the bandit, SMOKE_STEPS (300) steps: minutes (the Slurm test)
#   ./runs.sh --only som          only one algorithm (som or nc_lql); combine with any of the above
set -euo pipefail
CALLER_DIR=$(pwd)
cd "$(dirname "$0")"

SET=paper
MODE=run
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    paper|quick|release|long|probe|vs_sac|five_tasks|target_screen|smoke) SET="$1" ;;
    --dry-run) MODE=dry ;;
    --slurm) MODE=slurm ;;
    --only)
      case "${2:-}" in
        som|nc_lql) ONLY="$2"; shift ;;
        *) echo "runs.sh: --only takes som or nc_lql, got '${2:-}' (see ./runs.sh --help)" >&2; exit 2 ;;
      esac ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "runs.sh: unknown argument '$1' (see ./runs.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
PYTHON=${PYTHON:-python}
[ "$SET" = release ] || [ "$SET" = long ] || [ "$SET" = vs_sac ] || [ "$SET" = five_tasks ] || [ "$SET" = target_screen ] || [ "$SET" = smoke ] || SEEDS=${SEEDS:-"1 2 3 4 5"}

# The quick set's budgets per (script, env): what was run for docs/results.md on 2 CPU cores. Every SOM line says how
# it collected data, so the commands stay those of the recorded runs: those with N = 32 collected with best-of-32
# acting (BEST_OF_32_DATA); the paper and long sets use the defaults (N = 1).
BEST_OF_32_DATA="--num-collect-candidates 32"
budget() {
  [ "$SET" = quick ] || return 0
  case "$1/$2" in
    som/Pendulum-v1) echo "--learning-starts 1000 --total-timesteps 15000 --log-frequency 500 $BEST_OF_32_DATA" ;;
    nc_lql/Pendulum-v1) echo "--learning-starts 1000 --total-timesteps 12000 --eval-frequency 2000 --log-frequency 500" ;;
    som/Hopper-v4) echo "--learning-starts 5000 --total-timesteps 40000 --log-frequency 1000 $BEST_OF_32_DATA" ;;
    nc_lql/Hopper-v4) echo "--learning-starts 5000 --total-timesteps 30000 --eval-frequency 2500 --log-frequency 1000" ;;
  esac
}

commands() {
  if [ "$SET" = probe ]; then  # the actor alone against the exact bandit reward, then RL on the bandit
    local probe="$PYTHON scripts/bandit_actor_probe.py"
    echo "$probe --updates 6000 --set score_estimator=idem score_norm=True q_norm=batch alpha=1.0 --sweep w=1.0,3.0,10.0"
    echo "$probe --updates 6000 --sweep alpha=0.03,0.1,0.3,1.0"
    echo "$probe --updates 6000 --sweep adaptive_power=0.0,1.0"
    echo "$probe --updates 6000 --set q_norm=none --sweep alpha=0.03,0.1"
    echo "$probe --updates 12000"
    local bandit="--env-id scripts.bandit:MultimodalBandit-v0 --num-envs 1 --learning-starts 500 --total-timesteps 3000"
    echo "$PYTHON som.py $bandit --num-candidates 1 --compile --exp-name bandit_replay_fit"
    # the bandit figure (docs/results.md): SOM with the replay fit, NC-LQL; then LQL's step-size sweep
    local small="--env-id scripts.bandit:MultimodalBandit-v0 --num-envs 1 --learning-starts 500 --batch-size 64 --hidden-dim 64"
    echo "$PYTHON som.py $small --total-timesteps 3500 --num-mc-samples 32 --num-candidates 1 --actor-lr 1e-3 --critic-lr 1e-3 --eval-frequency 3500 --eval-episodes 100 --save-model"
    echo "$PYTHON nc_lql.py $small --total-timesteps 2500 --critic-lr 1e-3 --eval-frequency 2500 --eval-episodes 50 --save-model"
    for x in 1e-4 1e-3 1e-2; do
      echo "$PYTHON nc_lql.py $small --total-timesteps 2500 --critic-lr 1e-3 --eval-frequency 2500 --eval-episodes 50 --save-model --lql --lql-step-size $x --exp-name lql_$x"
    done
    # SOM's alpha on Hopper-v4 at the CPU settings, 17,500 steps (docs/som_studies.md; 0.1 is the quick run)
    for a in 0.03 0.3; do
      echo "$PYTHON som.py --env-id Hopper-v4 --seed 1 --num-envs 1 --eval-episodes 10 --critic-lr 3e-4 --num-mc-samples 16 --num-target-candidates 1 --actor-lr 3e-4 --eval-frequency 2500 --learning-starts 5000 --total-timesteps 17500 --alpha $a $BEST_OF_32_DATA"
    done
    return
  fi
  if [ "$SET" = long ]; then  # seeds: SEEDS, default 100
    local common="--total-timesteps ${LONG_STEPS:-150000} --eval-frequency 7500 --eval-episodes 10 --compile"
    common="$common --checkpoint-frequency 15000 --checkpoint-buffer --save-model"
    for env in HalfCheetah-v4 Hopper-v4; do
      for seed in ${SEEDS:-100}; do
        for algo in nc_lql som; do
          if [ -z "$ONLY" ] || [ "$ONLY" = $algo ]; then
            echo "$PYTHON $algo.py --env-id $env --seed $seed $common --exp-name ${algo}_long"
          fi
        done
      done
    done
    return
  fi
  if [ "$SET" = vs_sac ]; then  # SOM, NC-LQL and Stable-Baselines3's SAC at the CPU settings, 30,000 steps
    local cpu="--num-envs 1 --learning-starts 5000 --batch-size 256 --critic-lr 3e-4 --eval-frequency 2500"
    cpu="$cpu --eval-episodes 5 --total-timesteps 30000 --compile --checkpoint-frequency 10000 --checkpoint-buffer"
    for env in HalfCheetah-v4 Hopper-v4; do
      for seed in ${SEEDS:-1 2}; do
        if [ -z "$ONLY" ] || [ "$ONLY" = som ]; then  # collecting with best-of-32, and with N = 1 (the default)
          local som="$PYTHON som.py --env-id $env --seed $seed $cpu --actor-lr 3e-4 --num-mc-samples 16 --num-target-candidates 1"
          echo "$som $BEST_OF_32_DATA --exp-name som_vs_sac_replay"
          echo "$som --num-collect-candidates 1 --exp-name som_vs_sac_replay_collect1"
        fi
        if [ -z "$ONLY" ] || [ "$ONLY" = nc_lql ]; then
          echo "$PYTHON nc_lql.py --env-id $env --seed $seed $cpu --exp-name nc_lql_vs_sac"
        fi
        if [ -z "$ONLY" ]; then
          echo "$PYTHON scripts/sac_baseline.py --env-id $env --seed $seed --total-timesteps 30000"
        fi
      done
    done
    return
  fi
  if [ "$SET" = five_tasks ]; then  # the papers' five tasks, seeds 1-3, the CPU settings of vs_sac, every default
    local cpu="--num-envs 1 --learning-starts 5000 --batch-size 256 --critic-lr 3e-4 --eval-frequency 2500"
    cpu="$cpu --eval-episodes 5 --total-timesteps 30000 --compile --checkpoint-frequency 10000 --checkpoint-buffer"
    local envs="HalfCheetah-v4 Hopper-v4 Walker2d-v4 Ant-v4 Humanoid-v4" env seed
    # in the order they ran: SAC everywhere, SOM, then NC-LQL's first seed on every task before its other two
    if [ -z "$ONLY" ]; then
      for env in $envs; do for seed in ${SEEDS:-1 2 3}; do
        echo "$PYTHON scripts/sac_baseline.py --env-id $env --seed $seed --total-timesteps 30000 --exp-name sac_five_tasks"
      done; done
    fi
    if [ -z "$ONLY" ] || [ "$ONLY" = som ]; then
      for env in $envs; do for seed in ${SEEDS:-1 2 3}; do
        echo "$PYTHON som.py --env-id $env --seed $seed $cpu --actor-lr 3e-4 --num-mc-samples 16 --num-target-candidates 1 --exp-name som_five_tasks"
      done; done
    fi
    if [ -z "$ONLY" ] || [ "$ONLY" = nc_lql ]; then
      for seeds in 1 "2 3"; do for env in $envs; do for seed in ${SEEDS:-$seeds}; do
        [ -n "${SEEDS:-}" ] && [ "$seeds" != 1 ] && continue
        echo "$PYTHON nc_lql.py --env-id $env --seed $seed $cpu --exp-name nc_lql_five_tasks"
      done; done; done
    fi
    return
  fi
  if [ "$SET" = target_screen ]; then  # SOM's target and training points: the five-task command, other flags
    local cpu="--num-envs 1 --learning-starts 5000 --batch-size 256 --critic-lr 3e-4 --eval-frequency 2500"
    cpu="$cpu --eval-episodes 5 --total-timesteps 30000 --compile --checkpoint-frequency 10000 --checkpoint-buffer"
    local som="$PYTHON som.py --env-id HalfCheetah-v4 --seed 1 $cpu --actor-lr 3e-4 --num-mc-samples 16 --num-target-candidates 1"
    # the default's run is five_tasks' own (som_five_tasks)
    echo "$som --q-norm uniform --exp-name som_screen_uniform"
    echo "$som --target-point-fraction 0.5 --exp-name som_screen_points"
    echo "$som --q-norm uniform --target-point-fraction 0.5 --exp-name som_screen_uniform_points"
    return
  fi
  if [ "$SET" = smoke ]; then  # seconds to minutes: each script and SAC on the bandit (tests/test_slurm.py)
    local bandit="--env-id scripts.bandit:MultimodalBandit-v0 --seed 1 --total-timesteps ${SMOKE_STEPS:-300}"
    local small="$bandit --num-envs 1 --learning-starts 100 --batch-size 32 --eval-frequency 100 --eval-episodes 4"
    small="$small --checkpoint-frequency 50 --checkpoint-buffer"
    [ -n "$ONLY" ] && [ "$ONLY" != som ] || echo "$PYTHON som.py $small --exp-name som_smoke"
    [ -n "$ONLY" ] && [ "$ONLY" != nc_lql ] || echo "$PYTHON nc_lql.py $small --hidden-dim 64 --exp-name nc_lql_smoke"
    [ -n "$ONLY" ] || echo "$PYTHON scripts/sac_baseline.py $bandit --learning-starts 100 --batch-size 32 --eval-frequency 100 --eval-episodes 4 --exp-name sac_smoke"
    return
  fi
  if [ "$SET" = release ]; then  # seeds: SEEDS, default 100 (the release's first seed)
    local common="--env-id Hopper-v4 --eval-frequency 7500 --eval-episodes 20 --compile"
    local keep="--checkpoint-frequency 15000 --checkpoint-buffer"  # so the run can be continued with --resume past 90,000
    for seed in ${SEEDS:-100}; do
      if [ -z "$ONLY" ] || [ "$ONLY" = nc_lql ]; then
        echo "$PYTHON nc_lql.py $common --total-timesteps 90000 --seed $seed --exp-name nc_lql_vs_release --save-model"
      fi
      if [ -z "$ONLY" ] || [ "$ONLY" = som ]; then
        echo "$PYTHON som.py $common --total-timesteps 90000 --seed $seed --exp-name som_protocol_first_fit" \
          "--save-model $BEST_OF_32_DATA"
      fi
    done
    # NC-LQL's second seed, run on to 150,000 transitions: its first 90,000 are the side-by-side's second seed (nothing
    # before 90,000 depends on the budget; the buffer, min(1M, budget) rows, does not fill), the rest is a long run
    if [ -z "${SEEDS:-}" ] && { [ -z "$ONLY" ] || [ "$ONLY" = nc_lql ]; }; then
      echo "$PYTHON nc_lql.py $common --total-timesteps 150000 --seed 101 --exp-name nc_lql_vs_release --save-model $keep"
    fi
    return
  fi
  local som_envs="Hopper-v4 HalfCheetah-v4 Walker2d-v4 Ant-v4 Humanoid-v4"
  local nc_envs="Hopper-v4 HalfCheetah-v4 Walker2d-v4 Ant-v4 Humanoid-v4 Swimmer-v4"
  local som_extra="" nc_extra=""
  if [ "$SET" = quick ]; then
    # CPU-sized (docs/results.md): one env, short warm-up, K = 16 and N = 1 for SOM's TD target, lr 3e-4.
    local cpu="--num-envs 1 --eval-episodes 10 --critic-lr 3e-4"
    som_envs="Pendulum-v1 Hopper-v4"
    nc_envs="Pendulum-v1 Hopper-v4"
    som_extra="$cpu --num-mc-samples 16 --num-target-candidates 1 --actor-lr 3e-4 --eval-frequency 2500"
    nc_extra="$cpu"
  fi
  for seed in $SEEDS; do
    if [ -z "$ONLY" ] || [ "$ONLY" = som ]; then
      for env in $som_envs; do echo "$PYTHON som.py --env-id $env --seed $seed $som_extra $(budget som "$env")"; done
    fi
    if [ -z "$ONLY" ] || [ "$ONLY" = nc_lql ]; then
      for env in $nc_envs; do echo "$PYTHON nc_lql.py --env-id $env --seed $seed $nc_extra $(budget nc_lql "$env")"; done
    fi
  done
}

mapfile -t JOBS < <(commands | sed 's/ *$//')
if [ ${#JOBS[@]} -eq 0 ]; then
  echo "runs.sh: the $SET set has no ${ONLY:-} jobs" >&2
  exit 2
fi

case "$MODE" in
  dry)
    printf '%s\n' "${JOBS[@]}"
    ;;
  slurm)
    script="$CALLER_DIR/runs_slurm.sbatch"
    {
      echo "#!/usr/bin/env bash"
      echo "# ./runs.sh $SET --slurm: one array task per command (docs/usage.md). sbatch's own variables override the"
      echo "# lines below without editing them (SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, ...)."
      echo "#SBATCH --job-name=som-nclql-$SET"
      echo "#SBATCH --array=0-$((${#JOBS[@]} - 1))"
      echo "#SBATCH --cpus-per-task=${RUNS_CPUS:-4}"
      [ "${RUNS_GPUS:-1}" = 0 ] || echo "#SBATCH --gres=gpu:${RUNS_GPUS:-1}"
      echo "#SBATCH --time=${RUNS_TIME:-48:00:00}"
      [ -z "${RUNS_PARTITION:-}" ] || echo "#SBATCH --partition=$RUNS_PARTITION"
      [ -z "${RUNS_ACCOUNT:-}" ] || echo "#SBATCH --account=$RUNS_ACCOUNT"
      echo "#SBATCH --output=slurm-%A_%a.out"
      echo "#SBATCH --open-mode=append"
      # B: the warning goes to the batch shell, which exec below replaces with the training process itself
      echo "#SBATCH --signal=B:TERM@${RUNS_WARNING_S:-120}"
      echo "#SBATCH --requeue"
      echo "cd $(pwd)"
      echo "JOBS=("
      for job in "${JOBS[@]}"; do printf "  %q\n" "$job"; done
      echo ")"
      echo "# each task runs in its own folder: a requeued or resubmitted task resumes its newest checkpoint there"
      echo "TASK_DIR=${RUNS_DIR:-runs}/slurm_$SET/task_\$SLURM_ARRAY_TASK_ID"
      echo 'CHECKPOINT=$(ls -t "$TASK_DIR"/*/checkpoint.pt 2>/dev/null | head -n 1)'
      echo 'eval "exec ${JOBS[$SLURM_ARRAY_TASK_ID]} --run-dir $TASK_DIR ${CHECKPOINT:+--resume $CHECKPOINT}"'
    } > "$script"
    echo "wrote $script with ${#JOBS[@]} array tasks; submit it with: sbatch $script"
    ;;
  run)
    WORKERS=${WORKERS:-1}
    printf '%s\n' "${JOBS[@]}" | xargs -P "$WORKERS" -I{} sh -c '{}'
    ;;
esac
