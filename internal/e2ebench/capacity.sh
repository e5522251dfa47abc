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
#
# TPT=quic dials the receiver's QUIC address instead of TCP (the aggregator
# then listens on both, --listen-quic); LOADS=k splits the N senders over k
# `heartbeat load` processes. A run whose machine-wide used memory passes
# MEM_STOP_GIB (18) is stopped, and says so.
set -u
MODE=$1; N=$2; P=$3; STEADY=$4; RESTART=$5; TPT=${TPT:-tcp}; LOADS=${LOADS:-1}
HB=${HB:-/tmp/cap/hb}; BARE=${BARE:-/tmp/cap/bare}; OUT=${OUT:-/tmp/cap}
AGG=${AGG:-$HB}   # the aggregator's binary, when it is another build than the load generator's
D=$OUT/r-$MODE-$N-$P-$TPT${TAG:-}; rm -rf $D; mkdir -p $D; cd $D
ulimit -n 20000
rss() { awk '/VmRSS/{print $2}' /proc/$1/status; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }   # clock ticks (100/s)
start_agg() {
  if [ $MODE = agg ]; then
    QUIC=""; [ $TPT = quic ] && QUIC="--listen-quic /ip4/127.0.0.1/udp/${QPORT:-0}/quic-v1"
    $AGG aggregate --listen /ip4/127.0.0.1/tcp/${PORT:-0} $QUIC --http 127.0.0.1:${HPORT:-0} --key $D/agg.key --max-nodes $((N + N/8 + 100)) --log-level info >> agg.out 2>> agg.err &
  else
    $BARE > agg.out 2>> agg.err &
  fi
  APID=$!
  for i in $(seq 50); do grep -q '/p2p/' agg.out 2>/dev/null && break; sleep 0.2; done
  sleep 0.5
}
start_agg
T=$(grep -o '/ip4/[^ ]*/tcp/[^ ]*/p2p/[^ ]*' agg.out | head -1)
PORT=$(echo $T | cut -d/ -f5)
if [ $TPT = quic ]; then T=$(grep -o '/ip4/[^ ]*/quic-v1/p2p/[^ ]*' agg.out | head -1); QPORT=$(echo $T | cut -d/ -f5); fi
H=$(grep -o 'http://[^ ]*' agg.out | head -1); HPORT=${H##*:}
sleep 1
R0=$(rss $APID); echo "mode=$MODE n=$N period=$P rss_empty_kib=$R0" | tee summary.txt
T0=$(date +%s.%N)
LPIDS=()
for k in $(seq $LOADS); do
  $HB load --target $T --nodes $((N / LOADS)) --period $P --report-every 2s > load$k.out 2> load$k.err &
  LPIDS+=($!)
done
ln -sf load1.out load.out
used_gib() { free -m | awk '/^Mem:/{printf "%.1f", $3/1024}'; }
connected() { local c=0; for k in $(seq $LOADS); do c=$((c + $(grep '^t=' load$k.out | tail -1 | grep -o 'connected=[0-9]*' | cut -d= -f2 | grep . || echo 0))); done; echo $c; }
# wait for all connected (max 900 s), watching memory
for i in $(seq 450); do
  C=$(connected); L="connected=$C used_gib=$(used_gib) rss_agg_kib=$(rss $APID)"
  echo "t=$((i*2)) $L" >> progress.txt
  [ "$C" -ge $((N / LOADS * LOADS)) ] && break
  if [ "$(echo "$(used_gib) > ${MEM_STOP_GIB:-18}" | bc)" = 1 ]; then echo "STOPPED: used memory $(used_gib) GiB at $C connected" | tee -a summary.txt; break; fi
  sleep 2
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
for k in $(seq $LOADS); do echo "load$k: $(grep '^t=' load$k.out | tail -1) rss_kib=$(rss ${LPIDS[$((k-1))]})" | tee -a summary.txt; done
echo "used_gib=$(used_gib) load_avg=$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a summary.txt
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
for p in "${LPIDS[@]}"; do kill -TERM $p; done; for p in "${LPIDS[@]}"; do wait $p; done
kill -TERM $APID; wait $APID
echo done >> summary.txt
