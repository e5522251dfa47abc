#!/bin/bash
# The false-suspicion runs of docs/benchmarks.md: `heartbeat load --trace`
# against `heartbeat aggregate`, then internal/e2ebench/falsesuspect counts
# the Suspect and Down transitions of nodes that kept beating.
#
#   go build -o /tmp/cap2/hb ./cmd/heartbeat
#   go build -o /tmp/cap2/fs ./internal/e2ebench/falsesuspect
#   internal/e2ebench/suspects.sh N PERIOD STEADY_SECONDS BURNERS(0|2) [tcp|quic]
#
# Phases: connect N senders (a connect storm), STEADY_SECONDS steady, then
# a full reconnect storm: the aggregator is stopped (SIGTERM) and started
# again on the same key, port and store, every sender reconnects, and the
# run holds 30 s after the last one is Up again. With BURNERS=2 two
# CPU-burning processes run beside the aggregator from the first
# connection to the end. The generator runs at nice -10 (GEN_NICE) so that
# on the shared 2 cores its beats leave on time; the trace shows the ones
# that did not, and those are not counted as false. Over QUIC use
# GEN_NICE=0: a QUIC generator needs about twice the aggregator's CPU, and
# at nice -10 it starved the aggregator's handshakes (dials timed out).
# PROTO=v2 makes the senders speak protocol v2 (default v1). Results in
# $OUT/s-N-PERIOD-bBURNERS-TRANSPORT/summary.txt.
set -u
N=$1; P=$2; STEADY=$3; BURN=$4; TPT=${5:-tcp}
HB=${HB:-/tmp/cap2/hb}; FS=${FS:-/tmp/cap2/fs}; OUT=${OUT:-/tmp/cap2}
D=$OUT/s-$N-$P-b$BURN-$TPT${TAG:-}; rm -rf $D; mkdir -p $D; cd $D
ulimit -n 20000
BURNERS=()
stop_burners() { for b in "${BURNERS[@]}"; do kill $b 2>/dev/null; wait $b 2>/dev/null; done; BURNERS=(); }
trap stop_burners EXIT
LISTEN=/ip4/127.0.0.1/tcp/${PORT:-0}
start_agg() {
  QUIC=""; [ $TPT = quic ] && QUIC="--listen-quic /ip4/127.0.0.1/udp/${QPORT:-0}/quic-v1"
  $HB aggregate --listen /ip4/127.0.0.1/tcp/${PORT:-0} $QUIC --http 127.0.0.1:${HPORT:-0} --data $D/data \
    --max-nodes $((N + N/8 + 100)) --log-level info >> agg.out 2>> agg.err &
  APID=$!
  for i in $(seq 100); do grep -q 'http ' agg.out 2>/dev/null && break; sleep 0.2; done
}
summary() { curl -s $H/api/summary | tr -d '\n '; }
field() { grep -o "\"$1\":[0-9.]*" | cut -d: -f2; }
start_agg
if [ $TPT = quic ]; then T=$(grep -o '/ip4/[^ ]*/quic-v1/p2p/[^ ]*' agg.out | head -1); QPORT=$(echo $T | cut -d/ -f5)
else T=$(grep -o '/ip4/[^ ]*/tcp/[^ ]*/p2p/[^ ]*' agg.out | head -1); fi
PORT=$(grep -o '/ip4/[^ ]*/tcp/[^ ]*/p2p/' agg.out | head -1 | cut -d/ -f5)
H=$(grep -o 'http://[^ ]*' agg.out | head -1); HPORT=${H##*:}
echo "n=$N period=$P burners=$BURN transport=$TPT protocol=${PROTO:-v1} nproc=$(nproc) load_avg_start=$(cut -d' ' -f1-3 /proc/loadavg)" | tee summary.txt
if [ $BURN -gt 0 ]; then
  for i in $(seq $BURN); do yes > /dev/null & BURNERS+=($!); done
fi
T0=$(date +%s.%N)
nice -n ${GEN_NICE:--10} $HB load --target $T --nodes $N --period $P --protocol ${PROTO:-v1} --report-every 2s --trace $D/load.trace > load.out 2> load.err &
LPID=$!
for i in $(seq 450); do
  C=$(grep '^t=' load.out | tail -1 | grep -o 'connected=[0-9]*' | cut -d= -f2)
  [ "${C:-0}" -ge $N ] && break; sleep 2
done
echo "connect_all_s=$(echo "$(date +%s.%N) - $T0" | bc) $(grep '^t=' load.out | tail -1)" | tee -a summary.txt
sleep $STEADY
echo "steady: $(summary | head -c 400)" | tee -a summary.txt
echo "load_avg_steady=$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a summary.txt
kill -TERM $APID; wait $APID
mv agg.err agg1.err; : > agg.out
T2=$(date +%s.%N)
start_agg
for i in $(seq 450); do
  U=$(summary | field up)
  [ "${U:-0}" -ge $N ] && break; sleep 1
done
echo "readmit_all_s=$(echo "$(date +%s.%N) - $T2" | bc) up=$U" | tee -a summary.txt
sleep 30
echo "after restart: $(summary | head -c 400)" | tee -a summary.txt
echo "load_avg_end=$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a summary.txt
stop_burners
kill -TERM $LPID; wait $LPID
kill -TERM $APID; wait $APID
echo "load: $(grep '^final' load.out)" | tee -a summary.txt
echo "health (max multiplier, before restart / after): $(grep -o 'multiplier=[0-9.]*' agg1.err | cut -d= -f2 | sort -g | tail -1) / $(grep -o 'multiplier=[0-9.]*' agg.err | cut -d= -f2 | sort -g | tail -1)" | tee -a summary.txt
echo "--- connect storm and steady (first aggregator):" | tee -a summary.txt
$FS -period $P -trace load.trace agg1.err | tee -a summary.txt
echo "--- reconnect storm (restarted aggregator):" | tee -a summary.txt
$FS -period $P -trace load.trace agg.err | tee -a summary.txt
