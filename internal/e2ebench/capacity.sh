#!/bin/bash
# The capacity runs of docs/benchmarks.md: `heartbeat load` against
# `heartbeat aggregate` (agg) or against the bare host (bare), on loopback.
#
#   go build -o /tmp/cap/hb ./cmd/heartbeat
#   go build -o /tmp/cap/bare ./internal/e2ebench/barehost
#   internal/e2ebench/capacity.sh MODE(agg|bare) N PERIOD STEADY_SECONDS RESTART(0|1)
#
# It waits until N senders are connected, then measures the receiver's RSS
# and CPU over STEADY_SECONDS, and with RESTART=1 stops the aggregator
# (SIGTERM), starts it again on the same key and port, and times until N
# nodes are Up. Results in $OUT/r-MODE-N-PERIOD/summary.txt.
set -u
MODE=$1; N=$2; P=$3; STEADY=$4; RESTART=$5
HB=${HB:-/tmp/cap/hb}; BARE=${BARE:-/tmp/cap/bare}; OUT=${OUT:-/tmp/cap}
AGG=${AGG:-$HB}   # the aggregator's binary, when it is another build than the load generator's
D=$OUT/r-$MODE-$N-$P${TAG:-}; rm -rf $D; mkdir -p $D; cd $D
ulimit -n 20000
rss() { awk '/VmRSS/{print $2}' /proc/$1/status; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }   # clock ticks (100/s)
start_agg() {
  if [ $MODE = agg ]; then
    $AGG aggregate --listen /ip4/127.0.0.1/tcp/${PORT:-0} --http 127.0.0.1:${HPORT:-0} --key $D/agg.key --max-nodes 25000 --log-level info >> agg.out 2>> agg.err &
  else
    $BARE > agg.out 2>> agg.err &
  fi
  APID=$!
  for i in $(seq 50); do grep -q '/p2p/' agg.out 2>/dev/null && break; sleep 0.2; done
}
start_agg
T=$(grep -o '/ip4/[^ ]*/p2p/[^ ]*' agg.out | head -1)
PORT=$(echo $T | cut -d/ -f5)
H=$(grep -o 'http://[^ ]*' agg.out | head -1); HPORT=${H##*:}
sleep 1
R0=$(rss $APID); echo "mode=$MODE n=$N period=$P rss_empty_kib=$R0" | tee summary.txt
T0=$(date +%s.%N)
$HB load --target $T --nodes $N --period $P --report-every 2s > load.out 2> load.err &
LPID=$!
# wait for all connected (max 600 s)
for i in $(seq 300); do
  L=$(grep '^t=' load.out | tail -1); C=$(echo "$L" | grep -o 'connected=[0-9]*' | cut -d= -f2)
  [ "${C:-0}" -ge $N ] && break; sleep 2
done
T1=$(date +%s.%N)
echo "connect_all_s=$(echo "$T1 - $T0" | bc) last=$L" | tee -a summary.txt
sleep 10
R1=$(rss $APID); C1=$(cpu $APID); B1=$( [ $MODE = agg ] && curl -s $H/api/summary | grep -o '"heartbeats_received": [0-9]*' | grep -o '[0-9]*$' || tail -1 agg.out | grep -o 'lines=[0-9]*' | cut -d= -f2)
RS=""; for i in 1 2 3 4 5 6; do RS="$RS $(rss $APID)"; sleep $((STEADY/6)); done
[ $MODE = agg ] && echo "go_heap_inuse_bytes=$(curl -s $H/metrics | awk '/^go_memstats_heap_inuse_bytes /{print $2}') rss_samples_kib=$RS" | tee -a summary.txt
[ $MODE = bare ] && echo "rss_samples_kib=$RS" | tee -a summary.txt
R2=$(echo $RS | tr ' ' '\n' | sort -n | sed -n 3p); C2=$(cpu $APID); B2=$( [ $MODE = agg ] && curl -s $H/api/summary | grep -o '"heartbeats_received": [0-9]*' | grep -o '[0-9]*$' || tail -1 agg.out | grep -o 'lines=[0-9]*' | cut -d= -f2)
echo "rss_kib=$R2 rss_per_node_kib=$(echo "scale=1; ($R2 - $R0)/$N" | bc) cpu_ticks=$((C2-C1)) beats=$((B2-B1)) cpu_s_per_100k_beats=$(echo "scale=3; ($C2-$C1)/100*100000/($B2-$B1)" | bc)" | tee -a summary.txt
echo "load: $(grep '^t=' load.out | tail -1)" | tee -a summary.txt
[ $MODE = agg ] && echo "suspect_lines_steady=$(grep -c 'to=suspect' agg.err) down=$(grep -c 'to=down' agg.err)" | tee -a summary.txt
if [ $RESTART = 1 ]; then
  kill -TERM $APID; wait $APID
  cp agg.err agg1.err; : > agg.err; : > agg.out
  T2=$(date +%s.%N)
  start_agg
  for i in $(seq 600); do
    U=$(curl -s $H/api/summary | grep -o '"up": [0-9]*' | grep -o '[0-9]*$')
    [ "${U:-0}" -ge $N ] && break; sleep 1
  done
  T3=$(date +%s.%N)
  echo "readmit_all_s=$(echo "$T3 - $T2" | bc) up=$U" | tee -a summary.txt
  sleep 20
  echo "after restart: suspect_lines=$(grep -c 'to=suspect' agg.err) down=$(grep -c 'to=down' agg.err) $(curl -s $H/api/summary | tr -d '\n ' | head -c 300)" | tee -a summary.txt
  echo "load: $(grep '^t=' load.out | tail -1)" | tee -a summary.txt
fi
kill -TERM $LPID; wait $LPID
kill -TERM $APID; wait $APID
echo done >> summary.txt
