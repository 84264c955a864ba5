#!/usr/bin/env bash
# make fuzz: runs every libFuzzer target of build-fuzz for FUZZ_SECONDS
# each (docs/fuzzing.md), from its seed corpus in tests/fuzz/corpus/<target>
# (read only) plus what earlier runs found (build-fuzz/corpus/<target>),
# prints per target the executions per second and in total, and fails if
# any target crashed (its input is kept in build-fuzz/artifacts/<target>/).
set -uo pipefail

BUILD=${FUZZ_BUILD:-build-fuzz}
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=(coordinator_request coordinator_answer participant_reply agent_request records config host_answer)

failed=()
rows=()
for t in "${TARGETS[@]}"; do
  mkdir -p "$BUILD/corpus/$t" "$BUILD/artifacts/$t" "$BUILD/logs"
  log="$BUILD/logs/$t.log"
  echo "fuzz: $t for ${SECONDS_EACH} s"
  "$BUILD/bin/fuzz_$t" -max_total_time="$SECONDS_EACH" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$BUILD/artifacts/$t/" "$BUILD/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
  corpus=$(find "$BUILD/corpus/$t" "tests/fuzz/corpus/$t" -type f | wc -l)
  status=ok
  if [ $rc -ne 0 ]; then
    status="CRASH (exit $rc; $log, $BUILD/artifacts/$t/)"
    failed+=("$t")
  fi
  rows+=("$(printf '%-20s %12s %14s %8s %8s  %s' "$t" "${rate:-?}" "${execs:-?}" "${cov:-?}" "$corpus" "$status")")
done

echo
printf '%-20s %12s %14s %8s %8s  %s\n' target "execs/s" "total execs" "cov" "corpus" status
for r in "${rows[@]}"; do echo "$r"; done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} crashed (reproduce: $BUILD/bin/fuzz_<target> <artifact>)" >&2
  exit 1
fi
