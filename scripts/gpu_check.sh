#!/usr/bin/env bash
# The GPU path in one command (at most 8 minutes on one GPU): one PASS / FAIL line per check, exit 1 if any failed.
#
#   bash scripts/gpu_check.sh              on a machine with a CUDA device
#   DEVICE=cpu bash scripts/gpu_check.sh   the same checks on the CPU (how this script itself is tested)
#
# Checks: the device; pytest -m cuda (compiled equals eager on the device for both scripts' updates and samplers, a
# checkpoint written there loads on the CPU and back); a short Hopper-v4 run of each script with --compile and, on
# CUDA, with --compile --cudagraphs, each with an evaluation and a checkpoint and then --resume from it, printing its
# steps per second; tests/benchmark.py on the device (no end-to-end runs).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python}
if [ "$DEVICE" = cuda ] && ! $PYTHON -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA device here; run it on a GPU machine (or DEVICE=cpu for the CPU variant)." >&2
  exit 2
fi
OUT=${OUT:-$(mktemp -d)}
FAILED=0
check() {  # check NAME COMMAND...: PASS or FAIL, with the command's last lines on failure
  local name=$1 log="$OUT/$(echo "$1" | tr -c 'a-zA-Z0-9' _).log"
  shift
  if "$@" > "$log" 2>&1; then echo "PASS $name$(grep -h '^steps/s' "$log" | tail -n 1 | sed 's/^/ (/;s/$/)/')"
  else echo "FAIL $name (log: $log)"; tail -n 15 "$log" | sed 's/^/    /'; FAILED=1; fi
}
device_flag=$([ "$DEVICE" = cuda ] && echo --cuda || echo --no-cuda)
check "device: $($PYTHON -c "import torch; print(torch.cuda.get_device_name() if '$DEVICE' == 'cuda' else 'cpu')")" true
check "pytest -m cuda on $DEVICE" env GPU_CHECK_DEVICE="$DEVICE" $PYTHON -m pytest -q -m cuda tests/test_cuda.py
short_run() {  # short_run SCRIPT FLAGS...: 3,000 steps with an evaluation and a checkpoint, then --resume to 4,000
  local script=$1 runs="$OUT/runs_$1_$RANDOM"
  shift
  $PYTHON "$script" --env-id Hopper-v4 --num-envs 1 --learning-starts 1000 --total-timesteps 3000 \
    --eval-frequency 2000 --eval-episodes 2 --checkpoint-frequency 3000 --log-frequency 500 $device_flag "$@" \
    --run-dir "$runs" || return 1
  $PYTHON "$script" --resume "$(ls "$runs"/*/checkpoint.pt)" --total-timesteps 4000 || return 1
  $PYTHON - "$runs" <<'PY'
import glob, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
(run,) = glob.glob(sys.argv[1] + "/*/")
acc = EventAccumulator(run); acc.Reload()
evals = [e.step for e in acc.Scalars("eval/episodic_return")]
assert evals == [2000, 3000, 4000], evals
print(f"steps/s {max(e.value for e in acc.Scalars('charts/SPS')):.1f}")
PY
}
# the CPU variant runs smaller networks (SOM_FLAGS, NC_LQL_FLAGS), so that it ends in minutes on 2 cores
small=$([ "$DEVICE" = cuda ] || echo --hidden-dim 64)
SOM_FLAGS=${SOM_FLAGS:-$small $([ "$DEVICE" = cuda ] || echo --num-mc-samples 16 --num-candidates 8)}
NC_LQL_FLAGS=${NC_LQL_FLAGS:-$small}
for script in som.py nc_lql.py; do
  flags=$([ "$script" = som.py ] && echo "$SOM_FLAGS" || echo "$NC_LQL_FLAGS")
  check "$script --compile on $DEVICE" short_run "$script" --compile $flags
  if [ "$DEVICE" = cuda ]; then check "$script --compile --cudagraphs" short_run "$script" --compile --cudagraphs $flags; fi
done
# the CPU variant times smaller sizes (BENCH_FLAGS), so that it ends in minutes on 2 cores
bench_flags=${BENCH_FLAGS:-$([ "$DEVICE" = cuda ] && echo --cuda || echo --batch-size 64 --num-mc-samples 16 --num-candidates 8)}
check "tests/benchmark.py $bench_flags" $PYTHON tests/benchmark.py $bench_flags --no-end-to-end --repeats 5 \
  --out "$OUT/benchmark_$DEVICE.json"
[ "$FAILED" = 0 ] && echo "gpu_check: every check passed ($DEVICE); logs in $OUT" || echo "gpu_check: failures above"
exit "$FAILED"
