#!/usr/bin/env bash
# The Debian packages, end to end without touching the system
# (ctest -L packaging; docs/deploy.md, "Packages"):
#
#  1. builds what the packages hold and runs cpack into a scratch directory;
#  2. checks each package's control data: name, Depends (adduser and the
#     shared libraries dpkg-shlibdeps found), conffiles, maintainer scripts,
#     and its payload (binaries in /usr/bin, units, configs);
#  3. unpacks all three with dpkg-deb -x into a scratch root (nothing is
#     installed, no user made, no maintainer script run) and checks every
#     binary runs --help from there and finds its libraries, and the units
#     pass systemd-analyze verify (skipped, saying so, if it is missing);
#  4. runs the unpacked keel-coordinator and two keel-agents with the
#     shipped configs, overridden on the command line the way the units do
#     (--name, --data-dir) plus what a scratch run needs (--listen, --init,
#     free ports), makes one transfer with the unpacked keelctl, asserts from
#     its JSON that it committed and the balances moved, scrapes each admin
#     plane for every metric the Grafana dashboard uses, and stops them
#     with SIGTERM, asserting exit status 0.
#
# Usage: package_test.sh SOURCE_DIR BUILD_DIR. Any failed step fails the test.
set -euo pipefail

SRC=$(cd "$1" && pwd)
BUILD=$(cd "$2" && pwd)
STEP_TIMEOUT=60   # seconds, for each step that waits on something

T=$(mktemp -d /tmp/keel-package-test.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ $rc -ne 0 ]; then
    for log in "$T"/run/*.log; do
      [ -f "$log" ] || continue
      echo "--- $log (last 20 lines)"
      tail -n 20 "$log"
    done
  fi
  rm -rf "$T"
  exit $rc
}
trap cleanup EXIT

step() { echo "== $*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# ---------------------------------------------------------------- build
step "build the packaged binaries and run cpack"
START=$(date +%s)
targets=(keel-coordinator keel-agent keelctl keel-demo keel-host)
if grep -q '^KEEL_BUILD_BENCH:BOOL=ON' "$BUILD/CMakeCache.txt"; then targets+=(keel-bench); fi
cmake --build "$BUILD" -j2 --target "${targets[@]}" >"$T/build.log" 2>&1 || { tail -n 30 "$T/build.log"; fail "build"; }
mkdir -p "$T/pkg"
(cd "$T/pkg" && timeout 240 cpack --config "$BUILD/CPackConfig.cmake" -B "$T/pkg" >"$T/cpack.log" 2>&1) ||
  { tail -n 30 "$T/cpack.log"; fail "cpack"; }
echo "   cpack took $(($(date +%s) - START)) s"

deb_of() {  # the one .deb of package $1
  local f=("$T"/pkg/"$1"_*.deb)
  if [ ${#f[@]} -ne 1 ] || [ ! -f "${f[0]}" ]; then fail "expected one $1_*.deb in $T/pkg, found: $(ls "$T/pkg")"; fi
  echo "${f[0]}"
}
COORD_DEB=$(deb_of keel-coordinator)
AGENT_DEB=$(deb_of keel-agent)
TOOLS_DEB=$(deb_of keel-tools)

# ---------------------------------------------------------------- control data
step "control data"
field() { dpkg-deb -f "$1" "$2"; }
contains() {  # contains WHAT IN HAYSTACK...
  local what=$1; shift
  [[ "$*" == *"$what"* ]] || fail "'$what' not in: $*"
}
for deb in "$COORD_DEB" "$AGENT_DEB" "$TOOLS_DEB"; do
  pkg=$(field "$deb" Package)
  ver=$(field "$deb" Version)
  deps=$(field "$deb" Depends)
  echo "   $pkg $ver ($(field "$deb" Architecture)): Depends: $deps"
  [ "$(field "$deb" Architecture)" = "$(dpkg --print-architecture)" ] || fail "$pkg: architecture"
  # The libraries every binary links (dpkg-shlibdeps): a Depends without
  # them would install and then fail to start.
  for lib in libc6 libcapnp liblmdb0 libssl3 libspdlog libfmt; do contains "$lib" "$pkg Depends: $deps"; done
done
for deb in "$COORD_DEB" "$AGENT_DEB"; do
  contains "adduser" "$(field "$deb" Package) Depends: $(field "$deb" Depends)"
done
contains "libpq5" "keel-agent Depends: $(field "$AGENT_DEB" Depends)"
contains "keel-coordinator (= $(field "$COORD_DEB" Version))" "keel-tools Recommends: $(field "$TOOLS_DEB" Recommends)"
contains "keel-agent (= $(field "$AGENT_DEB" Version))" "keel-tools Recommends: $(field "$TOOLS_DEB" Recommends)"

for pair in "coordinator:$COORD_DEB:/etc/keel/coordinator.toml" "agent:$AGENT_DEB:/etc/keel/agent-example.toml"; do
  IFS=: read -r name deb conffile <<<"$pair"
  ctl="$T/control-$name"
  dpkg-deb -e "$deb" "$ctl"
  [ "$(cat "$ctl/conffiles")" = "$conffile" ] || fail "$name conffiles: $(cat "$ctl/conffiles")"
  for s in postinst prerm postrm; do
    [ -x "$ctl/$s" ] || fail "$name: no executable $s"
    sh -n "$ctl/$s" || fail "$name: $s does not parse"
  done
  # The scripts' promises (docs/deploy.md): make the user, start nothing,
  # stop on remove only, never delete data.
  grep -q 'adduser --system --group --home /var/lib/keel' "$ctl/postinst" || fail "$name postinst: no keel user"
  if grep -Eq 'systemctl (start|restart|enable)' "$ctl/postinst"; then fail "$name postinst starts a unit"; fi
  grep -q 'systemctl stop' "$ctl/prerm" || fail "$name prerm: no stop"
  if grep -q 'rm -rf\|/var/lib/keel/' "$ctl/postrm"; then fail "$name postrm touches /var/lib/keel"; fi
done

# ---------------------------------------------------------------- payload
step "payload"
payload() { dpkg-deb -c "$1" | awk '{print $NF}' | sed 's|^\./|/|'; }
expect_in() {  # expect_in DEB PATH...
  local deb=$1; shift
  local listing
  listing=$(payload "$deb")
  for p in "$@"; do
    grep -qx "$p" <<<"$listing" || fail "$(basename "$deb") lacks $p"
  done
}
expect_in "$COORD_DEB" /usr/bin/keel-coordinator /lib/systemd/system/keel-coordinator.service /etc/keel/coordinator.toml
expect_in "$AGENT_DEB" /usr/bin/keel-agent "/lib/systemd/system/keel-agent@.service" /etc/keel/agent-example.toml
tool_bins=(keelctl keel-demo keel-host)
if grep -q '^KEEL_BUILD_BENCH:BOOL=ON' "$BUILD/CMakeCache.txt"; then tool_bins+=(keel-bench); fi
expect_in "$TOOLS_DEB" "${tool_bins[@]/#//usr/bin/}"
# Nothing under /var/lib/keel is the package's: dpkg would remove it on purge.
for deb in "$COORD_DEB" "$AGENT_DEB" "$TOOLS_DEB"; do
  if payload "$deb" | grep -q '^/var/'; then fail "$(basename "$deb") ships files under /var"; fi
  echo "   $(basename "$deb"): $(du -k "$deb" | cut -f1) KiB; $(payload "$deb" | grep -v '/$' | tr '\n' ' ')"
done

R="$T/root"
mkdir -p "$R"
for deb in "$COORD_DEB" "$AGENT_DEB" "$TOOLS_DEB"; do dpkg-deb -x "$deb" "$R"; done

step "binaries run from the scratch root"
for b in keel-coordinator keel-agent "${tool_bins[@]}"; do
  if ldd "$R/usr/bin/$b" | grep -q 'not found'; then fail "$b: $(ldd "$R/usr/bin/$b" | grep 'not found')"; fi
  timeout 10 "$R/usr/bin/$b" --help >"$T/help.out" 2>&1 || fail "$b --help: $(head -n 5 "$T/help.out")"
  file_size=$(stat -c %s "$R/usr/bin/$b")
  # Stripped (CPACK_STRIP_FILES): no debug sections left.
  if readelf -S "$R/usr/bin/$b" | grep -q '\.debug_info'; then fail "$b is not stripped"; fi
  echo "   $b --help ok ($((file_size / 1024)) KiB, stripped)"
done

step "systemd units"
grep -q '^ExecStart=/usr/bin/keel-coordinator --config /etc/keel/coordinator.toml$' \
  "$R/lib/systemd/system/keel-coordinator.service" || fail "coordinator ExecStart"
grep -q '^ExecStart=/usr/bin/keel-agent --config /etc/keel/agent-%i.toml --name %i --data-dir /var/lib/keel/agent-%i$' \
  "$R/lib/systemd/system/keel-agent@.service" || fail "agent ExecStart"
for u in "$R/lib/systemd/system/keel-coordinator.service" "$R/lib/systemd/system/keel-agent@.service"; do
  if grep -q -- '^ExecStart.*--init' "$u"; then fail "$(basename "$u") runs --init"; fi
  grep -qx 'RestartPreventExitStatus=2 3' "$u" || fail "$(basename "$u"): RestartPreventExitStatus"
  grep -qx 'User=keel' "$u" || fail "$(basename "$u"): User"
done
if command -v systemd-analyze >/dev/null 2>&1; then
  # Copies whose ExecStart points into the scratch root (the real
  # /usr/bin has no keel binaries; --root would also want a whole system
  # there), and the template through an instance. verify exits 0 even on an
  # unknown key or a bad value, so any output fails too.
  mkdir -p "$T/units"
  sed "s|/usr/bin/keel-|$R/usr/bin/keel-|" "$R/lib/systemd/system/keel-coordinator.service" \
    >"$T/units/keel-coordinator.service"
  sed "s|/usr/bin/keel-|$R/usr/bin/keel-|" "$R/lib/systemd/system/keel-agent@.service" \
    >"$T/units/keel-agent@example.service"
  for u in keel-coordinator.service keel-agent@example.service; do
    timeout 30 systemd-analyze verify "$T/units/$u" >"$T/verify.out" 2>&1 ||
      fail "systemd-analyze verify $u: $(cat "$T/verify.out")"
    if [ -s "$T/verify.out" ]; then fail "systemd-analyze verify $u: $(cat "$T/verify.out")"; fi
    echo "   systemd-analyze verify $u: clean"
  done
else
  echo "   SKIPPED systemd-analyze verify: systemd-analyze is not installed (package systemd)"
fi

# ---------------------------------------------------------------- a running bank
step "run the unpacked daemons with the shipped configs"
mkdir -p "$T/run" "$T/data"
# A loopback port nothing listens on, out of the kernel's ephemeral range
# (32768-60999), where the port-0 listeners below land.
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 12000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  fail "no free port"
}
wait_file() {  # wait_file FILE PID WHAT
  local deadline=$(($(date +%s) + STEP_TIMEOUT))
  until [ -s "$1" ]; do
    kill -0 "$2" 2>/dev/null || fail "$3 exited before it was ready"
    [ "$(date +%s)" -lt "$deadline" ] || fail "$3 not ready within ${STEP_TIMEOUT}s"
    sleep 0.1
  done
}
admin_port() {  # the admin plane's port, from "admin plane on http://127.0.0.1:P (...)"
  local p
  p=$(grep -o 'admin plane on http://127\.0\.0\.1:[0-9]*' "$1" | head -n 1 | sed 's/.*://')
  [ -n "$p" ] || fail "no admin plane line in $1"
  echo "$p"
}
CPORT=$(free_port)
ETC="$R/etc/keel"

declare -A AGENT_ADDR AGENT_ADMIN
for a in bank-a bank-b; do
  # The unit's command line (--config agent-NAME.toml --name --data-dir)
  # with the shipped example as agent-NAME.toml; and what a scratch run
  # needs: a first start (--init), ports the kernel picks, this coordinator.
  cp "$ETC/agent-example.toml" "$T/run/agent-$a.toml"
  "$R/usr/bin/keel-agent" --config "$T/run/agent-$a.toml" --name "$a" --data-dir "$T/data/agent-$a" --init \
    --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --coordinator "127.0.0.1:$CPORT" \
    --ready-file "$T/run/$a.ready" >"$T/run/$a.log" 2>&1 &
  PIDS+=("$!")
  wait_file "$T/run/$a.ready" $! "keel-agent $a"
  AGENT_ADDR[$a]=$(cat "$T/run/$a.ready")
  AGENT_ADMIN[$a]=$(admin_port "$T/run/$a.log")
  echo "   keel-agent $a on ${AGENT_ADDR[$a]}, admin plane on port ${AGENT_ADMIN[$a]}"
done

# The shipped coordinator.toml with its one participant line replaced by
# the two agents, and data_dir, listen and admin listen overridden.
grep -q '^example = "127.0.0.1:7401"' "$ETC/coordinator.toml" || fail "coordinator.toml: no example participant"
sed "s|^example = .*|bank-a = \"${AGENT_ADDR[bank-a]}\"\nbank-b = \"${AGENT_ADDR[bank-b]}\"|" \
  "$ETC/coordinator.toml" >"$T/run/coordinator.toml"
"$R/usr/bin/keel-coordinator" --config "$T/run/coordinator.toml" --data-dir "$T/data/coordinator" --init \
  --listen "127.0.0.1:$CPORT" --admin-listen 127.0.0.1:0 --ready-file "$T/run/coordinator.ready" \
  >"$T/run/coordinator.log" 2>&1 &
COORD_PID=$!
PIDS+=("$COORD_PID")
wait_file "$T/run/coordinator.ready" $COORD_PID keel-coordinator
COORD_ADMIN=$(admin_port "$T/run/coordinator.log")
echo "   keel-coordinator on $(cat "$T/run/coordinator.ready"), admin plane on port $COORD_ADMIN"
grep -q "data directory $T/data/coordinator: initialised as a coordinator (node 1)" "$T/run/coordinator.log" ||
  fail "the coordinator did not initialise its data directory"

step "one transfer with the unpacked keelctl"
ctl() { timeout 30 "$R/usr/bin/keelctl" -c "127.0.0.1:$CPORT" --timeout 10s --json "$@"; }
ctl open bank-a:alice 1000 >"$T/open-a.json"
ctl open bank-b:bob 0 >"$T/open-b.json"
set +e
ctl transfer bank-a:alice bank-b:bob 250 >"$T/transfer.json"
rc=$?
set -e
echo "   keelctl --json transfer: exit $rc: $(cat "$T/transfer.json")"
[ $rc -eq 0 ] || fail "keelctl transfer exited $rc (0 is committed)"
grep -q '"outcome":"committed"' "$T/transfer.json" || fail "the transfer did not commit"
seq=$(grep -o '"seq_text":"[0-9]*:[0-9]*"' "$T/transfer.json" | head -n 1 | cut -d'"' -f4)
[ -n "$seq" ] || fail "no seq in keelctl's answer"
ctl query "$seq" >"$T/query.json"
echo "   keelctl --json query $seq: $(head -c 300 "$T/query.json")..."
grep -q '"state":"committed"' "$T/query.json" || fail "query $seq: $(cat "$T/query.json")"
ctl balance bank-a:alice bank-b:bob >"$T/balance.json"
echo "   keelctl --json balance: $(cat "$T/balance.json")"
grep -q '"bank-a:alice"[^}]*"balance":750' "$T/balance.json" || fail "alice's balance is not 750"
grep -q '"bank-b:bob"[^}]*"balance":250' "$T/balance.json" || fail "bob's balance is not 250"

step "admin planes serve every metric the dashboard uses"
scrape() {  # HTTP/1.1 GET /metrics with bash alone (no curl on a bare machine)
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
  timeout 10 cat <&3
  exec 3<&-
}
scrape "$COORD_ADMIN" >"$T/metrics.all"
scrape "${AGENT_ADMIN[bank-a]}" >>"$T/metrics.all"
scrape "${AGENT_ADMIN[bank-b]}" >>"$T/metrics.all"
grep -q '^keel_answers_total{outcome="committed"} [1-9]' "$T/metrics.all" ||
  fail "the coordinator's /metrics does not count the committed answer"
# The label values the dashboard's selectors and legends count on.
for sample in 'keel_answers_total{outcome="rolled_back"}' 'keel_interactions_finished_total{state="heuristic_mixed"}' \
  'keel_participant_up{participant="bank-a"} 1' 'keel_agent_votes_total{vote="yes"} 1' 'keel_agent_info{agent="bank-b"} 1' \
  'keel_agent_call_seconds_bucket{call="prepare",le='; do
  grep -qF "$sample" "$T/metrics.all" || fail "no '$sample' in the admin planes' /metrics"
done
DASH="$SRC/docs/monitoring/keel-grafana-dashboard.json"
names=$(grep -o '"expr": *"[^"]*"' "$DASH" | grep -o 'keel_[a-z0-9_]*' | sort -u)
[ -n "$names" ] || fail "no metric in $DASH"
for n in $names; do
  grep -q "^${n}[{ ]" "$T/metrics.all" || fail "$n: used by the dashboard, not served by any admin plane"
done
echo "   $(wc -w <<<"$names") metric names of the dashboard, all served"

step "stop with SIGTERM"
for i in "${!PIDS[@]}"; do
  pid=${PIDS[$i]}
  kill -TERM "$pid"
  set +e
  timeout "$STEP_TIMEOUT" tail --pid="$pid" -f /dev/null
  wait "$pid"
  rc=$?
  set -e
  [ $rc -eq 0 ] || fail "pid $pid exited $rc after SIGTERM (0 expected)"
done
PIDS=()
echo "PASSED in $(($(date +%s) - START)) s"
