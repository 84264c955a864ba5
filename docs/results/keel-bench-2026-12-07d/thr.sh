#!/bin/bash
# usage: thr.sh BINDIR LABEL ARGS... : per-thread switches per interaction over 4 s
B=$1; L=$2; shift 2
($B/keel-bench "$@" --quiet > /tmp/thr-run.txt 2>&1 &)
sleep 5
A=$(pgrep -f "keel-agent.*bank-a" | head -1); C=$(pgrep -f keel-coordinator | head -1)
snap() { for p in $A $C; do for t in $(ls /proc/$p/task); do echo "$p.$t $(grep -E '^voluntary|^nonvoluntary' /proc/$p/task/$t/status | awk '{print $2}' | tr '\n' ' ') $(awk '{print $14+$15}' /proc/$p/task/$t/stat)"; done; done | sort; }
snap > /tmp/thr1; sleep 4; snap > /tmp/thr2
while pgrep -f "keel-bench" > /dev/null; do sleep 0.5; done
R=$(grep -o "^  [0-9]* interactions/s" /tmp/thr-run.txt | awk '{print $1}')
P50=$(grep -o "p50 [0-9]*" /tmp/thr-run.txt | head -1)
echo "$L rate $R $P50 $(join /tmp/thr1 /tmp/thr2 | awk -v n=$((R*4)) -v a=$A '{v=$5-$2; i=$6-$3; if (v+i > n/10) printf "[%s %s vol %.2f inv %.2f] ", ($1 ~ "^"a"\\.") ? "agent" : "coord", $1, v/n, i/n}')"
