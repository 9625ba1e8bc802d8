#!/bin/sh
# Thread scaling: the C engine (hello_c) and the Python handler (pymongoose_uring) with
# 1, 2, 4 and 8 ring threads, servers on CPUs 0-7 and wrk (8 threads) on CPUs 8-15.
# Needs a machine with at least 16 CPUs; results land in benchmarks/results/raw/scaling-*/.
#   sh benchmarks/scaling.sh                 # keepalive, 256 connections
#   WORKLOAD=pipelined sh benchmarks/scaling.sh
set -e
cd "$(dirname "$0")/.."
SERVER_CPUS=${SERVER_CPUS:-0-7}
CLIENT_CPUS=${CLIENT_CPUS:-8-15}
WORKLOAD=${WORKLOAD:-keepalive}
CONNECTIONS=${CONNECTIONS:-256}
STAMP=$(date +%Y%m%d-%H%M%S)
status=0
for server in ${SERVERS:-hello_c pymongoose_uring}; do
    python3 benchmarks/sweep.py --server "$server" --workload "$WORKLOAD" \
        --knob threads=1,2,4,8 --connections "$CONNECTIONS" \
        --server-cpus "$SERVER_CPUS" --client-cpus "$CLIENT_CPUS" \
        --rounds "${ROUNDS:-3}" --duration "${DURATION:-3}" \
        --out "benchmarks/results/raw/scaling-$STAMP/$server" "$@" || status=1
done
exit $status
