#!/usr/bin/env bash
# Entries PUT throughput and persisted rows/s with MASTERS Redis Cluster masters (ports 7301..) and
# WORKERS workers, for docs/performance.md ("Redis Cluster"). Needs the release binaries
# (cargo build --release -p api -p worker), wrk, redis-server and the local PostgreSQL; not part of ci.
#   usage: bash xtask/assets/cluster-scaling.sh MASTERS WORKERS
#   env:   SECS (wrk seconds, 8), PARTS (--entries-partitions, 16),
#          URL_OVERRIDE=redis://127.0.0.1:6379 to measure one standalone Redis instead
set -euo pipefail
M=$1; W=$2; ROOT=$(cd "$(dirname "$0")/../.." && pwd); BIN=$ROOT/target/release; DIR=$ROOT/target/cluster-scaling; SECS=${SECS:-8}
pkill -f "redis-server 127.0.0.1:73" || true; sleep 0.5
rm -rf $DIR; mkdir -p $DIR
ports=(); for i in $(seq 1 $M); do p=$((7300+i)); ports+=($p); mkdir -p $DIR/$p
  redis-server --port $p --bind 127.0.0.1 --cluster-enabled yes --cluster-announce-ip 127.0.0.1 --cluster-config-file nodes.conf --save "" --appendonly no --dir $DIR/$p --daemonize yes --logfile $DIR/$p/log; done
sleep 0.5
if [ $M -eq 1 ]; then redis-cli -p ${ports[0]} cluster addslotsrange 0 16383 >/dev/null
else redis-cli --cluster create $(for p in ${ports[@]}; do echo 127.0.0.1:$p; done) --cluster-replicas 0 --cluster-yes >/dev/null; fi
until redis-cli -p ${ports[0]} cluster info | grep -q cluster_state:ok; do sleep 0.2; done
URL="${URL_OVERRIDE:-redis-cluster://127.0.0.1:${ports[0]}}"
psql -qh 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS keel_scale WITH (FORCE)" -c "CREATE DATABASE keel_scale" >/dev/null
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/keel_scale REDIS_URL=$URL KEEL_NAMESPACE=scale KEEL_ENTRIES_PARTITIONS=${PARTS:-16} KEEL_LOG_LEVEL=warn LOG_LEVEL=warn
$BIN/api --listen 127.0.0.1:8390 > $DIR/api.log 2>&1 & echo $! > $DIR/pids
for w in $(seq 1 $W); do KEEL_INSTANCE_ID=w$w $BIN/worker --admin-listen 127.0.0.1:$((9390+w)) > $DIR/w$w.log 2>&1 & echo $! >> $DIR/pids; done
for i in $(seq 1 150); do curl -sf 127.0.0.1:8390/readyz >/dev/null && break; sleep 0.2; done
for w in $(seq 1 $W); do until curl -sf 127.0.0.1:$((9390+w))/readyz >/dev/null; do sleep 0.2; done; done
cat > $DIR/put.lua <<'LUA'
counter = 0
run = tostring(os.time())
request = function() counter = counter + 1
  return wrk.format("PUT", "/api/v1/entries/k" .. run .. "-" .. counter, {["Content-Type"]="application/json"}, '{"v":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}') end
LUA
start=$(date +%s.%N)
wrk -t1 -c32 -d${SECS}s --latency -s $DIR/put.lua http://127.0.0.1:8390 > $DIR/wrk.txt
rps=$(awk '/Requests\/sec/ {print $2}' $DIR/wrk.txt); total=$(awk '/requests in/ {print $1}' $DIR/wrk.txt); non2xx=$(awk '/Non-2xx/ {print $5}' $DIR/wrk.txt)
# wait for the backlog to reach the table
rows=0; for i in $(seq 1 600); do rows=$(psql -tAh 127.0.0.1 -U postgres -d keel_scale -c "select count(*) from entries"); [ "$rows" -ge "$((total - ${non2xx:-0}))" ] && break; sleep 0.1; done
end=$(date +%s.%N)
persist=$(echo "$rows / ($end - $start)" | bc -l)
printf "masters=%s workers=%s put_rps=%s requests=%s non2xx=%s rows=%s rows_per_s=%.0f\n" $M $W $rps $total ${non2xx:-0} $rows $persist
kill $(cat $DIR/pids) 2>/dev/null || true; sleep 1
for p in ${ports[@]}; do redis-cli -p $p shutdown nosave >/dev/null 2>&1 || true; done
