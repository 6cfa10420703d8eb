#!/usr/bin/env bash
# The zero-trust loop under measurement: zgate-control serve beside zgate run
# ([control], one mTLS listener, one pinned worker), in front of a loadgen echo upstream.
#
# Parts (PARTS, default "revoke swap churn"):
#   revoke  revoke accepted by the control process -> each affected flow closed, timed
#           where the client sees its connection end (zgate-bench revoke): FLOWS live
#           mTLS flows, AFFECTED of them the round's victim identity, ROUNDS rounds.
#   swap    a table of SWAP_RULES rules re-published (`zgate-control rollback`) while
#           SWAP_FLOWS plain flows are live: time until the worker enforces it on every
#           flow (zgate_worker_last_redecision_seconds), the longest re-decision
#           slice and the longest loop turn meanwhile, and the end-to-end time from the
#           rollback command to the worker's enforced version moving.
#   churn   64-byte ping-pong p50/p99/p99.9 over CHURN_CONNS mTLS connections, once
#           with the control process idle and once while it publishes 10 fact deltas
#           and 1 table per second (the same run, alternating, CHURN_ROUNDS pairs).
#
# Output in OUT_DIR: machine.txt, results.jsonl, logs/. Every process this script
# starts is stopped by PID on exit.
#
# Usage: tools/bench-control.sh [OUT_DIR]   (default: target/bench-control/<UTC time>)
# Knobs: PARTS, ROUNDS (10), FLOWS (1000), AFFECTED (100), SWAP_RULES (100000),
#   SWAP_FLOWS (9000: 2 descriptors each in the gateway, under the 20,000 open-file
#   cap), CHURN_CONNS (50), CHURN_DURATION_S (6), CHURN_ROUNDS (3), GW_CORE (1),
#   CLIENT_CORE (0), BIN_DIR (target/release).
# Build first:
#   cargo build --release -p zgate-dataplane -p zgate-control -p zgate-bench -p zgate-devpki
set -euo pipefail
cd "$(dirname "$0")/.."

PARTS=${PARTS:-"revoke swap churn"}
ROUNDS=${ROUNDS:-10}
FLOWS=${FLOWS:-1000}
AFFECTED=${AFFECTED:-100}
SWAP_RULES=${SWAP_RULES:-100000}
SWAP_FLOWS=${SWAP_FLOWS:-9000}
CHURN_CONNS=${CHURN_CONNS:-50}
CHURN_DURATION_S=${CHURN_DURATION_S:-6}
CHURN_ROUNDS=${CHURN_ROUNDS:-3}
GW_CORE=${GW_CORE:-1}
CLIENT_CORE=${CLIENT_CORE:-0}
BIN_DIR=${BIN_DIR:-target/release}
OUT_DIR=${1:-target/bench-control/$(date -u +%Y%m%dT%H%M%SZ)}
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

for b in zgate zgate-control zgate-bench zgate-devpki; do
  [ -x "$BIN_DIR/$b" ] || { echo "bench-control: $BIN_DIR/$b missing; build it first (see the header)" >&2; exit 2; }
done
BIN_DIR=$(cd "$BIN_DIR" && pwd)
loadgen="$BIN_DIR/zgate-bench"
# Everything but the gateway's worker runs on CLIENT_CORE (the control process, the CLI,
# the polling below), so that what the worker's core shows is the worker's own work.
ctl_bin="$BIN_DIR/zgate-control"
ctl() { taskset -c "$CLIENT_CORE" "$ctl_bin" "$@"; }
need_fds=$((SWAP_FLOWS + 512))
if [ "$(ulimit -n)" -lt "$need_fds" ]; then
  ulimit -n "$need_fds" 2>/dev/null || { echo "bench-control: open-file limit $(ulimit -n) too low" >&2; exit 2; }
fi
# Process bookkeeping (every process started here is stopped by PID on exit) and
# port waits, shared with the other bench scripts.
BENCH=bench-control
source tools/bench/lib.sh
metric() {  # metric NAME: the sum of its samples on the gateway's /metrics
  taskset -c "$CLIENT_CORE" curl -s "http://127.0.0.1:$ADMIN/metrics" | prom_sum "$1"
}
metric_us() {  # metric_us NAME: a _seconds metric's sum, in whole microseconds
  metric "$1" | awk '{ printf "%d\n", $1 * 1000000 + 0.5 }'
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "cpu: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo) x $(nproc)"
  echo "kernel: $(uname -r)"
  echo "parts: $PARTS; rounds $ROUNDS, flows $FLOWS, affected $AFFECTED, swap $SWAP_RULES rules x $SWAP_FLOWS flows"
} > "$OUT_DIR/machine.txt"

# PKI: a bystander, one victim per round, and the churn client.
victims=()
clients=(--client spiffe://zgate.test/bystander --client spiffe://zgate.test/pinger)
for r in $(seq "$ROUNDS"); do clients+=(--client "spiffe://zgate.test/victim-$r"); done
"$BIN_DIR/zgate-devpki" --out "$work/pki" "${clients[@]}" > /dev/null
for r in $(seq "$ROUNDS"); do
  victims+=(--victim "$work/pki/client-$((r + 1)).pem,$work/pki/client-$((r + 1)).key,spiffe://zgate.test/victim-$r")
done

# Policy: mTLS clients of zgate.test on `tls`; loopback on `plain` (the swap's flows).
mkdir -p "$work/policy"
cat > "$work/policy/base.toml" <<'EOF'
[[rule]]
id = "zgate-test-clients"
action = "allow"
services = ["tls"]
principals = ["spiffe://zgate.test/*"]

[[rule]]
id = "loopback"
action = "allow"
services = ["plain"]
sources = ["127.0.0.0/8"]
EOF
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf 'bench %s\n' "$token" > "$work/tokens"; chmod 600 "$work/tokens"
echo "$token" > "$work/token"
read -r API ADMIN TLS_PORT PLAIN_PORT UP <<< "$(free_ports 5)"

taskset -c "$CLIENT_CORE" "$loadgen" serve --listen "127.0.0.1:$UP" --max-runtime-s 3600 > "$work/upstream.log" 2>&1 &
pids+=($!)
wait_port "$UP"
# Started directly, not through `ctl`: a backgrounded shell function is a subshell, and
# stopping its PID would leave the control process behind.
taskset -c "$CLIENT_CORE" "$ctl_bin" serve --policy-dir "$work/policy" --state-dir "$work/control-state" \
  --socket "$work/control.sock" --channel "$work/channel.sock" \
  --api "127.0.0.1:$API" --api-tokens "$work/tokens" > "$work/control.log" 2>&1 &
pids+=($!)
wait_port "$API"
cat > "$work/zgate.toml" <<EOF
admin = "127.0.0.1:$ADMIN"
audit = "off"
[workers]
cores = [$GW_CORE]
[[listener]]
name = "tls"
listen = "127.0.0.1:$TLS_PORT"
upstream = "127.0.0.1:$UP"
max_connections = 20000
[listener.tls]
cert = "$work/pki/server.pem"
key = "$work/pki/server.key"
client_ca = "$work/pki/ca.pem"
trust_domain = "zgate.test"
[[listener]]
name = "plain"
listen = "127.0.0.1:$PLAIN_PORT"
upstream = "127.0.0.1:$UP"
max_connections = 20000
[control]
socket = "$work/channel.sock"
state_dir = "$work/gateway-state"
name = "bench-gateway"
EOF
"$BIN_DIR/zgate" run --config "$work/zgate.toml" > "$work/gateway.log" 2>&1 &
gw=$!; pids+=($gw)
wait_ready "$ADMIN" 100 || true
tls=(--tls --ca "$work/pki/ca.pem" --server-name localhost)
export ZGATE_CONTROL_SOCKET="$work/control.sock"

if has_part revoke; then
  echo "bench-control: revoke, $ROUNDS rounds of $AFFECTED affected flows among $FLOWS" >&2
  taskset -c "$CLIENT_CORE" "$loadgen" revoke --target "127.0.0.1:$TLS_PORT" "${tls[@]}" \
    --cert "$work/pki/client-0.pem" --key "$work/pki/client-0.key" \
    "${victims[@]}" --flows "$FLOWS" --affected "$AFFECTED" \
    --api "127.0.0.1:$API" --token-file "$work/token" --stall-s 10 \
    --label "revoke" >> "$results"
  tail -1 "$results" >&2
  echo "{\"mode\":\"revoke-gateway\",\"longest_redecision_us\":$(metric_us zgate_worker_longest_redecision_slice_seconds),\"closed_by_policy\":$(metric zgate_flows_closed_by_policy_total),\"stalls\":$(metric zgate_worker_stalls_total)}" >> "$results"
  tail -1 "$results" >&2
fi

if has_part swap; then
  echo "bench-control: swap, $SWAP_RULES rules with $SWAP_FLOWS live flows" >&2
  taskset -c "$CLIENT_CORE" python3 - "$work/policy/big.toml" "$SWAP_RULES" <<'EOF'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path + ".tmp", "w") as f:
    for i in range(n):
        # Rules a loopback flow never matches (10.x sources), each its own service set.
        f.write(f'[[rule]]\nid = "r{i}"\naction = "allow"\nservices = ["plain"]\n'
                f'sources = ["10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32"]\n\n')
import os
os.rename(path + ".tmp", path)
EOF
  t_write=$(date +%s.%N)
  for _ in $(seq 600); do  # the big table compiles (bounded: 120 s)
    v=$(ctl status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["table_version"] or 0)')
    [ "$v" -ge 2 ] && break
    sleep 0.2
  done
  t_compiled=$(date +%s.%N)
  for _ in $(seq 300); do
    [ "$(metric zgate_worker_table_version)" -ge 2 ] && break
    sleep 0.1
  done
  taskset -c "$CLIENT_CORE" "$loadgen" idle --target "127.0.0.1:$PLAIN_PORT" \
    --connections "$SWAP_FLOWS" --hold-s 60 > "$work/idle.json" 2> "$work/idle.log" &
  idle=$!; pids+=($idle)
  for _ in $(seq 600); do [ -s "$work/idle.json" ] && break; sleep 0.1; done
  active=$(metric zgate_connections_active)
  slice_before=$(metric_us zgate_worker_longest_redecision_slice_seconds)
  turn_before=$(metric_us zgate_worker_longest_redecision_turn_seconds)
  target=$(( $(metric zgate_worker_table_version) + 1 ))
  # Re-publish the big table under a new version: no compile on the way.
  t0=$(date +%s%N)
  ctl rollback "$v" > /dev/null 2>&1 || ctl rollback > /dev/null
  target=$(ctl status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["table_version"])')
  for _ in $(seq 3000); do
    [ "$(metric zgate_worker_table_version)" -ge "$target" ] && break
    sleep 0.005
  done
  t1=$(date +%s%N)
  python3 - "$results" <<EOF
import json
line = {"mode": "swap", "rules": $SWAP_RULES, "flows_live": $active,
        "compile_s": round($t_compiled - $t_write, 3),
        "rollback_to_enforced_ms": round(($t1 - $t0) / 1e6, 2),
        "redecision_us": $(metric_us zgate_worker_last_redecision_seconds),
        "longest_slice_us": $(metric_us zgate_worker_longest_redecision_slice_seconds),
        "longest_slice_before_us": $slice_before,
        "longest_turn_during_us": $(metric_us zgate_worker_longest_redecision_turn_seconds),
        "longest_turn_during_before_us": $turn_before,
        "closed_by_policy": $(metric zgate_flows_closed_by_policy_total),
        "stalls": $(metric zgate_worker_stalls_total)}
open("$results", "a").write(json.dumps(line) + "\n")
print(json.dumps(line))
EOF
  stop_pid "$idle"
  rm -f "$work/policy/big.toml"
  for _ in $(seq 600); do
    v=$(ctl status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["tables"][-1]["rules"])')
    [ "$v" -le 2 ] && break
    sleep 0.2
  done
fi

if has_part churn; then
  echo "bench-control: churn, ping-pong over $CHURN_CONNS mTLS connections, quiet vs 10 deltas + 1 table per second" >&2
  # 10 fact deltas (HTTP/JSON API, one kept-alive connection) and 1 table (a policy
  # edit) per second until killed: a light client, so that what is measured is the
  # gateway's side, not the cost of starting a CLI process per change.
  churner() {
    taskset -c "$CLIENT_CORE" python3 - "$API" "$token" "$work/policy/churn.toml" <<'PY'
import http.client, json, sys, time
port, token, policy = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = http.client.HTTPConnection("127.0.0.1", port)
i = 0
while True:
    t0 = time.monotonic()
    for k in range(10):
        body = json.dumps({"principal": f"spiffe://zgate.test/churn-{i % 50}", "score": i % 100})
        for attempt in range(3):
            try:
                c.request("POST", "/v1/risk", body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
                r = c.getresponse(); r.read()
                break
            except (OSError, http.client.HTTPException):
                # The server may close an idle kept-alive connection: open another.
                c.close(); c = http.client.HTTPConnection("127.0.0.1", port)
        else:
            sys.exit("churn: the API does not answer")
        if r.status != 200:
            sys.exit(f"churn: {r.status}")
        i += 1
        time.sleep(max(0.0, t0 + (k + 1) * 0.1 - time.monotonic()))
    with open(policy + ".tmp", "w") as f:
        f.write(f"# churn {i}\n")
    import os; os.rename(policy + ".tmp", policy)
PY
  }
  for r in $(seq "$CHURN_ROUNDS"); do
    for mode in quiet churn; do
      cp=""
      if [ "$mode" = churn ]; then churner & cp=$!; pids+=($cp); fi
      taskset -c "$CLIENT_CORE" "$loadgen" pingpong --target "127.0.0.1:$TLS_PORT" "${tls[@]}" \
        --cert "$work/pki/client-1.pem" --key "$work/pki/client-1.key" \
        --connections "$CHURN_CONNS" --size 64 --requests 100000000 \
        --duration-s "$CHURN_DURATION_S" --warmup-s 1 --label "churn-$mode-$r" >> "$results"
      [ -n "$cp" ] && stop_pid "$cp"
      tail -1 "$results" >&2
    done
  done
  echo "{\"mode\":\"churn-facts\",\"facts_version\":$(metric zgate_facts_version),\"table_version\":$(metric zgate_table_version),\"control_refusals\":$(metric zgate_control_refusals_total)}" >> "$results"
fi
echo "bench-control: results in $OUT_DIR" >&2
