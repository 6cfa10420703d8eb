# Shell helpers shared by the bench scripts (bench-proxy, bench-tls, bench-control,
# bench-fleet, bench-scale): the run's directories, process bookkeeping (every process a
# script starts is killed by PID on exit), port and readiness waits, /metrics sums, and
# the measurement window (CPU of the gateway vs. everything else on the machine).
# Sourced after the script sets: BENCH (its name, for messages and its scratch
# directory), OUT_DIR; for the measurement window also clk (clock ticks per second),
# QUIET_PCT, QUIET_WAIT_S, and the arrays `cpu_pids` and `upstream_pids` it fills as it
# starts processes. Sets OUT_DIR (made, absolute), work (a scratch directory, removed on
# exit) and results (OUT_DIR/results.jsonl, emptied).

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
work=$(mktemp -d -t "zgate-$BENCH.XXXXXX")
results="$OUT_DIR/results.jsonl"
: > "$results"

# Every process this script starts is recorded here and killed by PID on exit.
pids=()
stop_pid() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${pids[@]}"; do stop_pid "$pid"; done
  mkdir -p "$OUT_DIR/logs"
  cp "$work"/*.log "$work/nginx/logs/error.log" "$OUT_DIR/logs/" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_ports() {  # free_ports N: N loopback ports free now, picked by the kernel at once
  # (random ports risk landing on one an outgoing connection holds: the ephemeral range)
  python3 -c 'import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

wait_port() {  # wait until something accepts on 127.0.0.1:$1 (bounded: 10 s)
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$BENCH: nothing listens on port $1 after 10 s" >&2
  return 1
}

wait_ready() {  # wait_ready ADMIN_PORT TRIES: until /readyz answers 200 (0.1 s apart); 1 if never
  local _
  for _ in $(seq "$2"); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}

prom_sum() {  # prom_sum NAME < /metrics text: the sum of NAME's samples over every label set
  awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { print s + 0 }'
}

all_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
pid_ticks() {
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{ print $12 + $13 }')))
  done
  echo "$t"
}
children_ticks() {
  awk -v hz="$clk" 'NR == 2 {
    split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d\n", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * hz }' "$work/times"
}
ours() { pid_ticks "${cpu_pids[@]}" "${upstream_pids[@]}"; }
wait_quiet() {
  local a0 o0 a1 o1 other=0
  for _ in $(seq "$QUIET_WAIT_S"); do
    a0=$(all_busy); o0=$(ours); sleep 1; a1=$(all_busy); o1=$(ours)
    other=$(( (a1 - a0 - (o1 - o0)) * 100 / clk ))
    [ "$other" -le "$QUIET_PCT" ] && return 0
  done
  echo "$BENCH: machine not quiet (other work ${other}% of a core); measuring anyway" >&2
}
# run_window LABEL KIND CONNS -- command...: one measurement, its JSON line, and a
# "window" line with the CPU that other processes used meanwhile.
run_window() {
  local label=$1 kind=$2 conns=$3; shift 4
  wait_quiet
  local a0 o0 c0 t0 a1 o1 c1 t1
  times > "$work/times"
  a0=$(all_busy); o0=$(ours); c0=$(children_ticks); t0=$(date +%s.%N)
  if ! "$@" > "$work/line.json" 2>>"$work/loadgen.log"; then
    echo "$BENCH: $label $kind failed: $(tail -1 "$work/loadgen.log")" >&2
    printf '{"mode":"error","label":"%s","kind":"%s","connections":%d}\n' "$label" "$kind" "$conns" >> "$results"
    return 0
  fi
  tee -a "$results" < "$work/line.json"
  a1=$(all_busy); o1=$(ours); times > "$work/times"; c1=$(children_ticks); t1=$(date +%s.%N)
  awk -v l="$label" -v k="$kind" -v n="$conns" -v t0="$t0" -v t1="$t1" -v hz="$clk" \
      -v all=$((a1 - a0)) -v our=$((o1 - o0 + c1 - c0)) -v la="$(cut -d' ' -f1 /proc/loadavg)" 'BEGIN {
    w = t1 - t0; o = (all - our) / hz; if (o < 0) o = 0
    printf "{\"mode\":\"window\",\"label\":\"%s\",\"kind\":\"%s\",\"connections\":%d,\"wall_s\":%.3f,\"other_core_pct\":%.1f,\"loadavg1\":%s}\n",
      l, k, n, w, (w > 0 ? 100 * o / w : 0), la }' | tee -a "$results"
}
