#!/usr/bin/env bash
# Speculative decoding on the H200 (issue 14). WALL-TIME BUDGET: about 4-5 minutes expected, 9 at most
# (hard timeouts: check 120 s, sweep 330 s, trained 90 s; `tests` 60 s if asked for); any phase may fail
# and the next one still runs.
#   bash scripts/gpu/spec.sh $OUT/spec                 # every phase
#   bash scripts/gpu/spec.sh $OUT/spec sweep trained   # a subset, in order
#   bash scripts/gpu/spec.sh /tmp/spec --smoke         # the same phases on a CPU, tiny models (~1 min)
# What each phase does, and which figures are measured vs predicted: scripts/bench_spec.py's docstring.
# Writes $1/spec_<phase>.json, $1/spec_<phase>.md (tables), $1/spec_<phase>.log, and all of them as $1.tar.
set -uo pipefail
OUT=${1:?usage: spec.sh OUT_DIR [check|sweep|trained|tests ...] [--smoke]}; shift
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
SMOKE=""; PHASES=()
for a in "$@"; do if [ "$a" = "--smoke" ]; then SMOKE="--smoke"; else PHASES+=("$a"); fi; done
[ ${#PHASES[@]} -eq 0 ] && PHASES=(check sweep trained)      # + tests: the pytest GPU case (~40 s, optional)
declare -A LIMIT=([tests]=60 [check]=120 [sweep]=330 [trained]=90)
status=0
for phase in "${PHASES[@]}"; do
  echo "=== spec $phase ($(date +%T))"
  if [ "$phase" = tests ]; then      # the GPU test: graphed speculation == eager == plain (tiny, fp32)
    timeout "${LIMIT[tests]}" python3 -m pytest -q -rf -m gpu tests/test_speculative.py 2>&1 | tee "$OUT/spec_tests.log" | tail -5
  else
    timeout "${LIMIT[$phase]}" python3 scripts/bench_spec.py "$phase" --out "$OUT" $SMOKE 2>&1 | tee "$OUT/spec_$phase.log" | grep -v '^|---'
  fi
  rc=${PIPESTATUS[0]}
  [ "$rc" -ne 0 ] && { echo "=== spec $phase FAILED (exit $rc; 124 = timeout)"; status=1; }
done
tar cf "$OUT.tar" -C "$(dirname "$OUT")" "$(basename "$OUT")"    # one file to bring back (the device returns <= 8)
echo "=== spec done ($(date +%T)); results in $OUT and $OUT.tar"
exit $status
