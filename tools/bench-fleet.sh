#!/usr/bin/env bash
# The fleet under measurement: a 3-member etcd cluster (Debian's etcd-server, 3.4) on
# loopback and three gateway hosts, each its own `zgate-control serve --store etcd` and
# `zgate run` ([control], one mTLS listener, one worker), in front of one zgate-bench
# echo upstream. Everything shares this machine's cores: the numbers include that.
#
# Parts (PARTS, default "revoke rollout"):
#   revoke   a revocation written on host 0 (its HTTP/JSON API) -> each affected flow
#            closed, timed where the client sees its connection end (zgate-bench revoke
#            over the three gateways): FLOWS live mTLS flows spread in turn over the
#            three, AFFECTED of them the round's victim, ROUNDS rounds. The last close
#            of a round is the last affected flow on the last of the three gateways.
#   rollout  a policy of ROLLOUT_RULES rules written to the three policy directories at
#            once (as a config push would): the elected compiler compiles and publishes
#            it through etcd, the other hosts fetch and verify it; time from the write
#            to each gateway enforcing it (its /metrics table version), ROLLOUT_ROUNDS
#            rounds, each followed by the way back to the 2-rule policy (also timed).
#
# Output in OUT_DIR: machine.txt, results.jsonl, logs/. Every process this script
# starts is stopped by PID on exit.
#
# Usage: tools/bench-fleet.sh [--short] [OUT_DIR]   (default: target/bench-fleet/<UTC time>)
#   --short: the script tests itself (tools/test): debug binaries, 2 rounds of 6 of 30
#   flows, 200 rules once; checks that every part's results came out, keeps nothing.
#   Not a benchmark.
# Knobs: PARTS, ROUNDS (10), FLOWS (400), AFFECTED (100), ROLLOUT_RULES (100000),
#   ROLLOUT_ROUNDS (3), BIN_DIR (target/release).
# Build first (etcd-client needs protoc, Debian's protobuf-compiler):
#   cargo build --release -p zgate-dataplane -p zgate-control -p zgate-bench -p zgate-devpki \
#     --features zgate-control/etcd
set -euo pipefail
cd "$(dirname "$0")/.."

short=""
if [ "${1:-}" = --short ]; then
  short=1; shift
  ROUNDS=2 FLOWS=30 AFFECTED=6 ROLLOUT_RULES=200 ROLLOUT_ROUNDS=1 BIN_DIR=target/debug
  set -- "$(mktemp -d -t zgate-bench-fleet-short.XXXXXX)"
fi
PARTS=${PARTS:-"revoke rollout"}
ROUNDS=${ROUNDS:-10}
FLOWS=${FLOWS:-400}
AFFECTED=${AFFECTED:-100}
ROLLOUT_RULES=${ROLLOUT_RULES:-100000}
ROLLOUT_ROUNDS=${ROLLOUT_ROUNDS:-3}
BIN_DIR=${BIN_DIR:-target/release}
OUT_DIR=${1:-target/bench-fleet/$(date -u +%Y%m%dT%H%M%SZ)}
has_part() { [[ " $PARTS " == *" $1 "* ]]; }

for b in zgate zgate-control zgate-bench zgate-devpki; do
  [ -x "$BIN_DIR/$b" ] || { echo "bench-fleet: $BIN_DIR/$b missing; build it first (see the header)" >&2; exit 2; }
done
command -v etcd > /dev/null || { echo "bench-fleet: etcd missing (apt-get install etcd-server)" >&2; exit 2; }
BIN_DIR=$(cd "$BIN_DIR" && pwd)
ctl_bin="$BIN_DIR/zgate-control"
loadgen="$BIN_DIR/zgate-bench"
BENCH=bench-fleet
source tools/bench/lib.sh

read -r -a PORTS <<< "$(free_ports 14)"
etcd_client() { echo "${PORTS[$1]}"; }          # 0..2
etcd_peer() { echo "${PORTS[$((3 + $1))]}"; }   # 3..5
API=${PORTS[6]}
gw_tls() { echo "${PORTS[$((7 + $1))]}"; }      # 7..9
gw_admin() { echo "${PORTS[$((10 + $1))]}"; }   # 10..12
UP=${PORTS[13]}

metric() {  # metric HOST NAME: the sum of its samples on gateway HOST's /metrics
  curl -s "http://127.0.0.1:$(gw_admin "$1")/metrics" | prom_sum "$2"
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "cpu: $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo) x $(nproc)"
  echo "kernel: $(uname -r)"
  echo "etcd: $(etcd --version | head -1)"
  echo "parts: $PARTS; rounds $ROUNDS, flows $FLOWS, affected $AFFECTED; rollout $ROLLOUT_RULES rules x $ROLLOUT_ROUNDS"
  echo "layout: 3 etcd members, 3 zgate-control, 3 zgate (1 worker each, cores 0/1/0), the load tool and the upstream, all on these $(nproc) cores"
} > "$OUT_DIR/machine.txt"

# etcd: three members, etcd's default heartbeat and election timeouts.
cluster=""
for i in 0 1 2; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$(etcd_peer $i)"; done
endpoints=""
for i in 0 1 2; do
  c="http://127.0.0.1:$(etcd_client $i)"; p="http://127.0.0.1:$(etcd_peer $i)"
  endpoints+="${endpoints:+,}$c"
  etcd --name "m$i" --data-dir "$work/etcd-$i" \
    --listen-client-urls "$c" --advertise-client-urls "$c" \
    --listen-peer-urls "$p" --initial-advertise-peer-urls "$p" \
    --initial-cluster "$cluster" --initial-cluster-token "bench-fleet-$$" \
    --initial-cluster-state new > "$work/etcd-$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do
  for _ in $(seq 100); do
    curl -s "http://127.0.0.1:$(etcd_client $i)/health" | grep -q '"health":"true"' && break
    sleep 0.1
  done
done

# PKI: the gateways' server certificate, a bystander, one victim per round.
clients=(--client spiffe://zgate.test/bystander)
for r in $(seq "$ROUNDS"); do clients+=(--client "spiffe://zgate.test/victim-$r"); done
"$BIN_DIR/zgate-devpki" --out "$work/pki" "${clients[@]}" > /dev/null
victims=()
for r in $(seq "$ROUNDS"); do
  victims+=(--victim "$work/pki/client-$r.pem,$work/pki/client-$r.key,spiffe://zgate.test/victim-$r")
done
token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf 'bench %s\n' "$token" > "$work/tokens"; chmod 600 "$work/tokens"
echo "$token" > "$work/token"

small_policy() {
  cat <<'EOF'
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
}

"$loadgen" serve --listen "127.0.0.1:$UP" --max-runtime-s 3600 > "$work/upstream.log" 2>&1 &
pids+=($!)
wait_port "$UP"
for i in 0 1 2; do
  mkdir -p "$work/policy-$i"
  small_policy > "$work/policy-$i/base.toml"
  api=()
  [ "$i" = 0 ] && api=(--api "127.0.0.1:$API" --api-tokens "$work/tokens")
  "$ctl_bin" serve --policy-dir "$work/policy-$i" --state-dir "$work/control-$i" \
    --socket "$work/control-$i.sock" --channel "$work/channel-$i.sock" \
    --store etcd --etcd-endpoints "$endpoints" --etcd-prefix /bench-fleet \
    "${api[@]}" > "$work/control-$i.log" 2>&1 &
  pids+=($!)
  cat > "$work/zgate-$i.toml" <<EOF
admin = "127.0.0.1:$(gw_admin $i)"
audit = "off"
[workers]
cores = [$((i % 2))]
[[listener]]
name = "tls"
listen = "127.0.0.1:$(gw_tls $i)"
upstream = "127.0.0.1:$UP"
max_connections = 20000
[listener.tls]
cert = "$work/pki/server.pem"
key = "$work/pki/server.key"
client_ca = "$work/pki/ca.pem"
trust_domain = "zgate.test"
[control]
socket = "$work/channel-$i.sock"
state_dir = "$work/gateway-$i"
name = "gw-$i"
EOF
done
wait_port "$API"
for i in 0 1 2; do
  "$BIN_DIR/zgate" run --config "$work/zgate-$i.toml" > "$work/gateway-$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1 2; do
  wait_ready "$(gw_admin $i)" 200 || { echo "bench-fleet: gateway $i not ready" >&2; exit 1; }
done

if has_part revoke; then
  echo "bench-fleet: revoke, $ROUNDS rounds of $AFFECTED affected flows among $FLOWS over 3 gateways" >&2
  "$loadgen" revoke --target "127.0.0.1:$(gw_tls 0)" \
    --also-target "127.0.0.1:$(gw_tls 1)" --also-target "127.0.0.1:$(gw_tls 2)" \
    --tls --ca "$work/pki/ca.pem" --server-name localhost \
    --cert "$work/pki/client-0.pem" --key "$work/pki/client-0.key" \
    "${victims[@]}" --flows "$FLOWS" --affected "$AFFECTED" \
    --api "127.0.0.1:$API" --token-file "$work/token" --stall-s 10 \
    --label "fleet-revoke" >> "$results"
  tail -1 "$results" >&2
  line="{\"mode\":\"fleet-revoke-gateways\""
  for i in 0 1 2; do
    line+=",\"gw$i\":{\"closed_by_policy\":$(metric $i zgate_flows_closed_by_policy_total),\"facts_version\":$(metric $i zgate_facts_version),\"stalls\":$(metric $i zgate_worker_stalls_total)}"
  done
  echo "$line}" >> "$results"
  tail -1 "$results" >&2
fi

if has_part rollout; then
  python3 - "$work/big.toml" "$ROLLOUT_RULES" <<'EOF'
import sys
path, n = sys.argv[1], int(sys.argv[2])
with open(path, "w") as f:
    f.write('[[rule]]\nid = "zgate-test-clients"\naction = "allow"\nservices = ["tls"]\n'
            'principals = ["spiffe://zgate.test/*"]\n\n')
    for i in range(n - 1):
        # Rules a loopback flow never matches (10.x sources).
        f.write(f'[[rule]]\nid = "r{i}"\naction = "allow"\nservices = ["tls"]\n'
                f'sources = ["10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32"]\n\n')
EOF
  # rollout LABEL FILE: write FILE as every host's only policy file at once, then time
  # each gateway until it enforces a newer table version (bounded: 300 s).
  rollout() {
    local label=$1 file=$2 i before=() t0 done_at=() left
    for i in 0 1 2; do before+=("$(metric $i zgate_table_version)"); cp "$file" "$work/policy-$i/.next"; done
    t0=$(date +%s%N)
    for i in 0 1 2; do mv "$work/policy-$i/.next" "$work/policy-$i/base.toml"; done
    done_at=(0 0 0); left=3
    for _ in $(seq 15000); do
      for i in 0 1 2; do
        if [ "${done_at[$i]}" = 0 ] && [ "$(metric $i zgate_table_version)" -gt "${before[$i]}" ]; then
          done_at[$i]=$(date +%s%N); left=$((left - 1))
        fi
      done
      [ "$left" = 0 ] && break
      sleep 0.01
    done
    [ "$left" = 0 ] || { echo "bench-fleet: $label: $left gateway(s) never enforced the new table" >&2; exit 1; }
    local manifest
    manifest=$(ZGATE_CONTROL_SOCKET="$work/control-0.sock" "$ctl_bin" status --json |
      python3 -c 'import json,sys; m=json.load(sys.stdin)["fleet_policy"]["manifest"]; print(json.dumps({k: m[k] for k in ("version","rules","size") } | {"chunks": len(m["chunks"])}))')
    python3 - "$results" "$label" "$t0" "${done_at[@]}" "$manifest" <<'EOF'
import json, sys
results, label, t0 = sys.argv[1], sys.argv[2], int(sys.argv[3])
at = [int(x) for x in sys.argv[4:7]]
manifest = json.loads(sys.argv[7])
line = {"mode": "fleet-rollout", "label": label,
        "enforced_ms": [round((t - t0) / 1e6, 1) for t in at],
        "all_enforced_ms": round((max(at) - t0) / 1e6, 1),
        "spread_ms": round((max(at) - min(at)) / 1e6, 1),
        "manifest": manifest}
open(results, "a").write(json.dumps(line) + "\n")
print(json.dumps(line), file=sys.stderr)
EOF
  }
  small_policy > "$work/small.toml"
  for r in $(seq "$ROLLOUT_ROUNDS"); do
    echo "bench-fleet: rollout $r: $ROLLOUT_RULES rules to 3 gateways" >&2
    rollout "rules-$ROLLOUT_RULES-$r" "$work/big.toml"
    rollout "rules-2-$r" "$work/small.toml"
  done
fi
if [ -n "$short" ]; then
  python3 - "$results" "$ROUNDS" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
rounds = int(sys.argv[2])
revoke = [l for l in lines if l.get("mode") == "revoke"]
rollout = [l for l in lines if l.get("mode") == "fleet-rollout"]
assert len(revoke) == 1 and revoke[0]["gateways"] == 3, lines
assert len(revoke[0]["last_close_us"]) == rounds and revoke[0]["bystanders_lost"] == 0, revoke
assert len(rollout) == 2 and all(len(l["enforced_ms"]) == 3 for l in rollout), rollout
print("bench-fleet --short: every part came out", file=sys.stderr)
EOF
  trap 'cleanup; rm -rf "$OUT_DIR"' EXIT
  exit 0
fi
echo "bench-fleet: results in $OUT_DIR" >&2
