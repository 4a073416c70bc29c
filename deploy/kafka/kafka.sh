#!/usr/bin/env bash
# Run a real single-node Apache Kafka 4.4.0 broker (KRaft, combined broker +
# controller) as a plain java process: no Docker needed. See README.md here.
#
#   kafka.sh fetch
#   kafka.sh start  [--dir DIR] [--port P] [--controller-port C] [--keep]
#   kafka.sh stop   [--dir DIR] [--rm]
#   kafka.sh status [--dir DIR]
#
# `start` prints exactly two lines on stdout, meant for eval or parsing:
#   KAFKA_BOOTSTRAP=127.0.0.1:<port>
#   KAFKA_DIR=<dir>
# Everything else goes to stderr. `stop`/`status` default to $KAFKA_DIR when
# it is exported: set -a; eval "$(kafka.sh start)"; set +a
# `start --keep` restarts the broker of DIR on its data and ports (after a
# stop or a crash) when DIR holds a formatted cluster; else it starts fresh.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
POM="$HERE/pom.xml"
CACHE="${TOKENMALL_KAFKA_CACHE:-$REPO/.cache/kafka}"
LIB="$CACHE/lib"
MARKER="$LIB/.complete"          # written only after a successful copy
JAVA="${JAVA:-${JAVA_HOME:+$JAVA_HOME/bin/}java}"
PYTHON="${PYTHON:-python3}"
HEAP="${TOKENMALL_KAFKA_HEAP:--Xmx512m}"
LOG_LEVEL="${TOKENMALL_KAFKA_LOG_LEVEL:-INFO}"   # broker log level in DIR/kafka.log
START_TIMEOUT="${TOKENMALL_KAFKA_START_TIMEOUT:-120}"  # seconds until the port accepts connections
STOP_TIMEOUT=20                  # seconds between TERM and KILL

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# ---------------------------------------------------------------- fetch
pom_hash() { sha256sum "$POM" | cut -d' ' -f1; }

jars_ready() { [[ -f "$MARKER" && "$(cat "$MARKER")" == "$(pom_hash)" ]]; }

cmd_fetch() {
  if jars_ready; then
    log "jars already in $LIB"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found (Maven 3 is needed once, to fetch the jars)"
  mkdir -p "$CACHE"
  # One fetch at a time (two concurrent `start`s on a cold cache). The lock
  # lives in a subshell so the broker started later never inherits its fd.
  (
    flock 9
    if jars_ready; then exit 0; fi
    log "fetching Kafka jars with Maven into $LIB ..."
    tmp="$(mktemp -d "$CACHE/lib.tmp.XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -DoutputDirectory="$tmp" -DincludeScope=runtime >"$CACHE/maven.log" 2>&1 \
      || { tail -n 40 "$CACHE/maven.log" >&2; die "maven failed (log: $CACHE/maven.log)"; }
    compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || die "maven produced no kafka_2.13 jar"
    pom_hash >"$tmp/.complete"
    rm -rf "$LIB"
    mv "$tmp" "$LIB"
    trap - EXIT
    log "$(find "$LIB" -name '*.jar' | wc -l) jars, $(du -sh "$LIB" | cut -f1) in $LIB"
  ) 9>"$CACHE/.lock"
}

# ---------------------------------------------------------------- helpers
# Prints N distinct free TCP ports on 127.0.0.1 (all held open at once, so
# they differ from each other; the kernel hands out different ones to
# concurrent callers).
free_ports() {
  "$PYTHON" - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# 16 random bytes, URL-safe base64 without padding (22 characters), drawn
# again until it begins with a letter or digit (as Kafka's own Uuid.randomUuid
# does): an id beginning with `-` would be read as an option. It is passed as
# `--cluster-id=ID` as well, which argparse never reads as an option.
cluster_id() {
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$id" =~ ^[A-Za-z0-9][A-Za-z0-9_-]{21}$ ]] && break
  done
  printf '%s\n' "$id"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Is the LISTEN socket on this port held by this pid? (So that another
# program on the port is never mistaken for our broker.)
owns_port() {  # pid port
  local inode
  for inode in $(awk -v p=":$(printf '%04X' "$2")" '$2 ~ p"$" && $4 == "0A" { print $10 }' \
      /proc/net/tcp /proc/net/tcp6 2>/dev/null); do
    find "/proc/$1/fd" -lname "socket:\[$inode\]" 2>/dev/null | grep -q . && return 0
  done
  return 1
}

# Alive and not a zombie.
pid_alive() {
  local state
  [[ -r "/proc/$1/stat" ]] || return 1
  state="$(sed 's/^.*) //' "/proc/$1/stat" | cut -d' ' -f1)"
  [[ "$state" != Z && "$state" != X ]]
}

# The pid recorded in DIR/kafka.pid, if it is still *our* broker for DIR
# (guards against a recycled pid).
broker_pid() {
  local dir="$1" pid
  [[ -f "$dir/kafka.pid" ]] || return 1
  pid="$(cat "$dir/kafka.pid")"
  [[ "$pid" =~ ^[0-9]+$ ]] && pid_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $dir/server.properties" || return 1
  echo "$pid"
}

prop() { sed -n "s/^$1=//p" "$2/server.properties" 2>/dev/null | head -n1; }

abs_dir() { mkdir -p "$1" && (cd "$1" && pwd); }

kill_broker() {  # pid dir
  local pid="$1" dir="$2" i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
    pid_alive "$pid" || break
    sleep 0.1
  done
  if pid_alive "$pid"; then
    log "broker $pid still running after ${STOP_TIMEOUT}s, sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do pid_alive "$pid" || break; sleep 0.1; done
  fi
  pid_alive "$pid" && die "could not stop broker $pid"
  # Dead. Its parent (init, since `start` has exited) reaps the zombie
  # shortly; give it a moment so a `ps` right after `stop` is clean.
  for ((i = 0; i < 30; i++)); do [[ -e "/proc/$pid" ]] || break; sleep 0.1; done
  rm -f "$dir/kafka.pid"
}

write_config() {  # dir port controller_port
  local dir="$1" port="$2" cport="$3"
  cat >"$dir/server.properties" <<EOF
# Written by deploy/kafka/kafka.sh: one node, broker and controller in one process.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
num.partitions=6
EOF
  cat >"$dir/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${sys:tokenmall.kafka.loglevel:-INFO}
rootLogger.appenderRef.out.ref = OUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
# The full config dumps (~2000 lines per start); server.properties is next to this file.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = WARN
EOF
}

# ---------------------------------------------------------------- start
STARTING_PID=""
STARTING_DIR=""
MADE_DIR=0
abort_start() {  # a failed or interrupted start leaves no process behind
  if [[ -n "$STARTING_PID" ]] && pid_alive "$STARTING_PID"; then
    kill -KILL "$STARTING_PID" 2>/dev/null || true
    rm -f "$STARTING_DIR/kafka.pid"
  fi
  # A folder we made ourselves is kept only if it holds a broker log to read.
  if ((MADE_DIR)) && [[ ! -s "$STARTING_DIR/kafka.log" ]]; then rm -rf "$STARTING_DIR"; fi
}

cmd_start() {
  local dir="" port="" cport="" attempt pid t0 i p keep=0 reuse=0
  while (($#)); do
    case "$1" in
      --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
      --port) port="${2:?--port needs a value}"; shift 2 ;;
      --controller-port) cport="${2:?--controller-port needs a value}"; shift 2 ;;
      --keep) keep=1; shift ;;
      *) usage ;;
    esac
  done
  [[ -z "$port" || "$port" =~ ^[0-9]+$ ]] || die "bad --port: $port"
  [[ -z "$cport" || "$cport" =~ ^[0-9]+$ ]] || die "bad --controller-port: $cport"
  [[ -n "$port" && "$port" == "$cport" ]] && die "--port and --controller-port must differ"

  cmd_fetch
  if [[ -n "$dir" ]]; then
    dir="$(abs_dir "$dir")"
    if pid="$(broker_pid "$dir")"; then die "a broker (pid $pid) already runs in $dir; stop it first"; fi
    # --keep on a formatted folder: the same cluster, data and ports (the
    # controller's address is part of the cluster's metadata).
    if ((keep)) && [[ -f "$dir/data/meta.properties" && -f "$dir/server.properties" ]]; then
      reuse=1
      [[ -n "$port" ]] || port="$(prop listeners "$dir" | sed -n 's/^PLAINTEXT:\/\/[^,]*:\([0-9]*\),.*/\1/p')"
      [[ -n "$cport" ]] || cport="$(prop listeners "$dir" | sed -n 's/.*CONTROLLER:\/\/[^,]*:\([0-9]*\).*/\1/p')"
      [[ -n "$port" && -n "$cport" ]] || die "cannot read the ports of $dir/server.properties"
      log "restarting the broker of $dir on its data (ports $port, $cport)"
    fi
  else
    dir="$(mktemp -d "${TMPDIR:-/tmp}/tokenmall-kafka.XXXXXX")"
    MADE_DIR=1
  fi

  local want_port="$port" want_cport="$cport"
  STARTING_DIR="$dir"
  trap abort_start EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  t0=$SECONDS

  for attempt in 1 2 3; do
    port="$want_port" cport="$want_cport"
    if [[ -z "$port" || -z "$cport" ]]; then
      local picked
      read -r -a picked <<<"$(free_ports 3)"
      for p in "${picked[@]}"; do
        if [[ -z "$port" && "$p" != "$cport" ]]; then port="$p"
        elif [[ -z "$cport" && "$p" != "$port" ]]; then cport="$p"; fi
      done
      [[ -n "$port" && -n "$cport" ]] || die "could not pick free ports (is $PYTHON working?)"
    fi

    for p in "$port" "$cport"; do
      if port_open "$p"; then
        [[ "$p" == "$want_port" || "$p" == "$want_cport" ]] && die "port $p is already in use"
        continue 2   # an auto-picked port was taken meanwhile: pick again
      fi
    done

    write_config "$dir" "$port" "$cport"
    if ((!reuse)); then
      # A fresh single-node cluster: the data folder is ours.
      rm -rf "$dir/data"
      # Short-lived tool: C1 only starts faster; WARN keeps the config dump out.
      "$JAVA" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dtokenmall.kafka.loglevel=WARN \
        -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$LIB/*" \
        kafka.tools.StorageTool format --standalone --cluster-id="$(cluster_id)" \
        -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
        || { cat "$dir/format.log" >&2; die "storage format failed"; }
      : >"$dir/kafka.log"
    elif [[ -f "$dir/kafka.log" ]]; then
      mv "$dir/kafka.log" "$dir/kafka.log.1"   # this start's log alone is read below
    fi
    "$JAVA" $HEAP -Dtokenmall.kafka.loglevel="$LOG_LEVEL" \
      -Dlog4j2.configurationFile="$dir/log4j2.properties" -cp "$LIB/*" \
      kafka.Kafka "$dir/server.properties" >>"$dir/kafka.log" 2>&1 </dev/null &
    pid=$!
    STARTING_PID=$pid
    echo "$pid" >"$dir/kafka.pid"

    for ((i = 0; ; i++)); do
      if port_open "$port" && owns_port "$pid" "$port"; then
        trap - EXIT INT TERM
        log "broker pid $pid accepts connections on 127.0.0.1:$port after $((SECONDS - t0))s (dir $dir)"
        printf 'KAFKA_BOOTSTRAP=127.0.0.1:%s\n' "$port"
        printf 'KAFKA_DIR=%q\n' "$dir"
        return 0
      fi
      if ! pid_alive "$pid"; then
        wait "$pid" 2>/dev/null || true
        rm -f "$dir/kafka.pid"
        # An auto-picked port taken between the pick and the bind: pick again.
        p="$(sed -n 's/.*failed to bind to 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$dir/kafka.log" | head -n1)"
        if [[ -n "$p" && "$p" != "$want_port" && "$p" != "$want_cport" ]]; then
          log "port $p was taken meanwhile (attempt $attempt), retrying with other ports"
          continue 2
        fi
        tail -n 40 "$dir/kafka.log" >&2
        die "broker exited before accepting connections (log: $dir/kafka.log)"
      fi
      if ((SECONDS - t0 >= START_TIMEOUT)); then
        kill_broker "$pid" "$dir"
        tail -n 40 "$dir/kafka.log" >&2
        die "broker did not accept connections on port $port within ${START_TIMEOUT}s (log: $dir/kafka.log)"
      fi
      sleep 0.1
    done
  done
  die "could not find free ports after 3 attempts (dir $dir)"
}

# ---------------------------------------------------------------- stop / status
parse_dir() {  # sets DIR from --dir or $KAFKA_DIR; REMOVE=1 on --rm (stop only)
  DIR="${KAFKA_DIR:-}" REMOVE=0
  while (($#)); do
    case "$1" in
      --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
      --rm) REMOVE=1; shift ;;
      *) usage ;;
    esac
  done
  [[ -n "$DIR" ]] || die "which broker? pass --dir DIR (or set KAFKA_DIR)"
  [[ -d "$DIR" ]] || die "no such directory: $DIR"
  DIR="$(cd "$DIR" && pwd)"
}

cmd_stop() {
  parse_dir "$@"
  local pid
  if pid="$(broker_pid "$DIR")"; then
    kill_broker "$pid" "$DIR"
    log "stopped broker $pid ($DIR)"
  else
    rm -f "$DIR/kafka.pid"
    log "no broker running in $DIR"
  fi
  if ((REMOVE)); then
    [[ -f "$DIR/server.properties" && -f "$DIR/kafka.log" ]] \
      || die "refusing to remove $DIR: it does not look like a kafka.sh folder"
    rm -rf "$DIR"
  fi
}

cmd_status() {
  parse_dir "$@"
  ((REMOVE)) && usage
  local pid port
  port="$(prop listeners "$DIR" | sed -n 's/^PLAINTEXT:\/\/[^,]*:\([0-9]*\),.*/\1/p')"
  if pid="$(broker_pid "$DIR")"; then
    if [[ -n "$port" ]] && port_open "$port"; then
      echo "running pid=$pid bootstrap=127.0.0.1:$port dir=$DIR"
    else
      echo "starting pid=$pid bootstrap=127.0.0.1:${port:-?} dir=$DIR"
    fi
    return 0
  fi
  echo "stopped dir=$DIR"
  return 3
}

# Sourced (tests): the functions only.
[[ "${BASH_SOURCE[0]}" == "$0" ]] || return 0

case "${1:-}" in
  fetch) shift; (($# == 0)) || usage; cmd_fetch ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  *) usage ;;
esac
