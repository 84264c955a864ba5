#!/usr/bin/env bash
# The journals' flat-size soak (docs/operations.md, "Release"): keel-bench
# runs ledger transfers for DURATION seconds with hot_retention_s =
# RETENTION, and every SAMPLE seconds the size of every LMDB data file of
# the run (the coordinator's hot WAL, each archive period, each agent's
# branch log) is written to OUT/sizes.csv. Under a steady load the hot WAL
# and the agents' files stop growing once the retention is reached; the
# archive grows by design (it is the kept history). With mdb_stat
# (Debian's lmdb-utils) each line also has the records held: interactions
# for the coordinator's files, branch records for an agent's. The
# load's own rate at each sample (keel-bench's progress line) goes to
# OUT/rate.csv.
#
#   scripts/soak-sizes.sh [DURATION=1800] [RETENTION=180] [CONCURRENCY=32] [OUT=soak-out] [SAMPLE=60]
set -euo pipefail
duration=${1:-1800}
retention=${2:-180}
concurrency=${3:-32}
out=${4:-soak-out}
sample=${5:-60}
bin=${KEEL_BIN:-$(cd "$(dirname "$0")/.." && pwd)/build/bin}
[[ -x $bin/keel-bench ]] || { echo "soak-sizes: no keel-bench in $bin (run make build, or set KEEL_BIN)" >&2; exit 2; }
for n in "$duration" "$retention" "$concurrency" "$sample"; do
  [[ $n =~ ^[0-9]+$ && $n -gt 0 ]] || { echo "soak-sizes: '$n' is not a positive whole number" >&2; exit 2; }
done
mkdir -p "$out"
"$bin/keel-bench" --duration "$duration" --concurrency "$concurrency" --keep \
  --coordinator-set "hot_retention_s=$retention" >"$out/bench.out" 2>"$out/bench.log" &
bench=$!
trap 'kill $bench 2>/dev/null || true' INT TERM
dir=""
for _ in $(seq 1 100); do
  dir=$(grep -o ' in /tmp/keel-bench-[A-Za-z0-9]*' "$out/bench.log" | head -1 | sed 's/^ in //') || true
  [[ -n $dir ]] && break
  sleep 0.2
done
[[ -n $dir ]] || { echo "soak-sizes: keel-bench did not say where its data is (see $out/bench.log)" >&2; exit 1; }
echo "soak-sizes: keel-bench's data in $dir; sizes every ${sample}s into $out/sizes.csv" >&2
echo "elapsed_s,file,bytes,records" >"$out/sizes.csv"
echo "elapsed_s,interactions_per_s" >"$out/rate.csv"
# One line per data file: elapsed, path, bytes, records ("" without mdb_stat).
sample_files() {
  local now=$1 f rel env n
  while IFS= read -r f; do
    rel=${f#"$dir"/}
    env=$(dirname "$f")
    n=""
    if command -v mdb_stat >/dev/null; then
      n=$(mdb_stat -s interactions "$env" 2>/dev/null | awk '/Entries:/ {print $2}') || true
      [[ -n $n ]] || n=$(mdb_stat -s branches "$env" 2>/dev/null | awk '/Entries:/ {print $2}') || true
    fi
    echo "$now,$rel,$(stat -c %s "$f"),$n"
  done < <(find "$dir" -name data.mdb 2>/dev/null | sort)
}
start=$(date +%s)
while kill -0 $bench 2>/dev/null; do
  now=$(( $(date +%s) - start ))
  lines=$(sample_files "$now")
  echo "$lines" >>"$out/sizes.csv"
  rate=$(grep -o '[0-9]* interactions/s' "$out/bench.log" 2>/dev/null | tail -1 | awk '{print $1}') || true
  echo "$now,${rate:-}" >>"$out/rate.csv"
  echo "soak-sizes: ${now}s ${rate:-?}/s: $(echo "$lines" | cut -d, -f2- | tr '\n' ' ' | head -c 400)" >&2
  for _ in $(seq 1 "$sample"); do kill -0 $bench 2>/dev/null || break; sleep 1; done
done
wait $bench || { echo "soak-sizes: keel-bench failed (see $out/bench.log)" >&2; exit 1; }
now=$(( $(date +%s) - start ))
sample_files "$now" >>"$out/sizes.csv"
echo "soak-sizes: done; $out/sizes.csv, $out/bench.out; data kept in $dir" >&2
