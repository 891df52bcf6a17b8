# Runs in a Ray node's container, head or worker, never in `pulumi up`: the container's main process, in bash, where
# `ray start --block` would keep a Python process resident only to wait (about 100 MiB RSS in every pod:
# docs/benchmarks.md, "Memory"). The container's command defines these functions, then calls
# `run_node <the command that starts the node>`: `ray start` without `--block` (on a worker, the same arguments to
# worker_start.py), which returns once the node's processes run.
#
# What `ray start --block` did, this does:
# - The container lives as long as the node. The processes `ray start` leaves running become this shell's children
#   when it exits (an orphan goes to its PID namespace's init, and this shell is the container's PID 1). When one of
#   them exits, the others are stopped and the container exits 1, for the kubelet to restart it, and its log says
#   which one and shows the end of that process's own log. One exit is not a failure: a raylet that exits because its
#   node was drained (by the autoscaler, which deletes the pod next) leaves a node that is done, and a restart would
#   bring a new node into the cluster; the container then waits for its SIGTERM.
# - On SIGTERM the node drains: it asks the GCS to drain it (reason PREEMPTION, for at most
#   RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S seconds; 0 skips the drain), through `ray drain-node`, a Python process that
#   lives only then, and waits until the raylet exits (the node is drained and idle) or the time is up. Then it stops
#   Ray's processes, the raylet first and the GCS last as `ray stop` does, each given STOP_SECONDS before SIGKILL,
#   and exits. A SIGTERM while the node starts (a worker waiting for its head) stops the start at once.
# - With autoscaling, the head links the autoscaler's events into its session (components/manifests/ray_node.py,
#   autoscaler_events_link) once the file exists, checked with the rest after `ray start` has returned: the session
#   link is then this run's, never an earlier session's, which the pod's /tmp keeps across container restarts.
#
# Nothing here runs for long in a process of its own: the wait between checks is a `sleep` waited for with bash's
# `wait`, which a trapped signal interrupts.

RAY_TEMP=/tmp/ray
RAY_SESSION="$RAY_TEMP/session_latest"
RAY_ADDRESS_FILE="$RAY_TEMP/ray_current_cluster"
# The raylet's last words when it exits because its node was drained (Ray's local_resource_manager.cc).
DRAINED_WORDS="The node is drained"
CHECK_SECONDS=1
STOP_SECONDS=3
# Set by the container's command: a file to link into the session's events (with autoscaling, on the head).
autoscaler_events=${autoscaler_events:-}
# What `ray start` left running, by process id: each one's start time (what tells it from a process that later takes
# its id, whatever either calls itself) and what it runs (label_of), to find the raylet and the GCS and to name it in
# the log.
declare -A ray_started=()
declare -A ray_labels=()
starting=""

say() {
  echo "ray-node: $*"
}

# Sets `state`, `ppid` and `started` from /proc/<pid>/stat (fields 3, 4 and 22), and `name` from its comm; returns 1
# if the process is gone.
read_process() {
  local line fields
  read -r line 2>/dev/null <"/proc/$1/stat" && read -r name 2>/dev/null <"/proc/$1/comm" || return 1
  read -r -a fields <<<"${line##*) }" # after the command name, which may hold spaces and parentheses
  state=${fields[0]}
  ppid=${fields[1]}
  started=${fields[19]}
}

# Fills the tables above with this shell's children: once the start has returned, the processes `ray start` left.
list_ray_processes() {
  local stat pid state ppid started name
  ray_started=()
  ray_labels=()
  for stat in /proc/[0-9]*/stat; do
    pid=${stat#/proc/}
    pid=${pid%/stat}
    if read_process "$pid" && [ "$ppid" = "$BASHPID" ] && [ "$pid" != "$starting" ]; then
      ray_started[$pid]=$started
      ray_labels[$pid]=$(label_of "$pid" "$name")
    fi
  done
}

# A process by what it runs: a Python process by its script or module (Ray's daemons are `python .../log_monitor.py`,
# `python -m ray.util.client.server`, ...), any other by its command name `$2` (raylet, gcs_server).
label_of() {
  local word words previous=""
  mapfile -d '' -t words 2>/dev/null <"/proc/$1/cmdline"
  if [[ $2 == python* ]]; then
    for word in "${words[@]:1}"; do
      if [[ $word == *.py ]]; then
        echo "${word##*/}"
        return
      elif [ "$previous" = -m ]; then
        echo "$word"
        return
      fi
      previous=$word
    done
  fi
  echo "$2"
}

# Whether the listed process `pid` has exited (a zombie until this shell reaps it, or its id taken by another).
exited() {
  local state ppid started name
  ! read_process "$1" || [ "$state" = Z ] || [ "$started" != "${ray_started[$1]}" ]
}

raylet_pid() {
  local pid
  for pid in "${!ray_labels[@]}"; do
    if [ "${ray_labels[$pid]}" = raylet ] && ! exited "$pid"; then
      echo "$pid"
      return
    fi
  done
}

# The node's id, from its raylet's command line (`--node_id=<hex>`).
node_id_of() {
  local word words
  mapfile -d '' -t words <"/proc/$1/cmdline"
  for word in "${words[@]}"; do
    if [[ $word == --node_id=* ]]; then
      echo "${word#--node_id=}"
      return
    fi
  done
}

# SIGTERM each of the given listed processes, then SIGKILL those still there after STOP_SECONDS.
terminate() {
  local pid tries
  [ $# -gt 0 ] || return 0
  kill -TERM "$@" 2>/dev/null
  for ((tries = 0; tries < STOP_SECONDS * 10; tries++)); do
    for pid in "$@"; do
      exited "$pid" || break
      pid=""
    done
    [ -n "$pid" ] || return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null
}

# Stops what is left of Ray's processes: the raylet first, the GCS last, the rest between.
stop_ray() {
  local pid first=() middle=() last=()
  for pid in "${!ray_started[@]}"; do
    exited "$pid" && continue
    case ${ray_labels[$pid]} in
    raylet) first+=("$pid") ;;
    gcs_server) last+=("$pid") ;;
    *) middle+=("$pid") ;;
    esac
  done
  terminate "${first[@]}"
  terminate "${middle[@]}"
  terminate "${last[@]}"
}

# Asks the GCS to drain this node for at most `seconds`, and waits until its raylet has exited or the time is up. The
# request runs beside the wait: a node the autoscaler drained just before it deleted the pod exits while it is made
# (and the request may then hang until its timeout).
drain() {
  local seconds=$1 raylet=$2 deadline node_id address asking
  deadline=$((SECONDS + seconds))
  node_id=$(node_id_of "$raylet")
  read -r address 2>/dev/null <"$RAY_ADDRESS_FILE" # Ray writes it without a newline
  if [ -z "$address" ] || [ -z "$node_id" ]; then
    say "SIGTERM: cannot drain (no GCS address in $RAY_ADDRESS_FILE or no node id): stopping at once"
    return
  fi
  say "SIGTERM: draining node $node_id for up to $seconds s (no new work here; running tasks finish)"
  timeout "$seconds" ray drain-node --address="$address" --node-id="$node_id" \
    --reason=DRAIN_NODE_REASON_PREEMPTION --reason-message="its pod is terminating" \
    --deadline-remaining-seconds="$seconds" &
  asking=$!
  while [ "$SECONDS" -lt "$deadline" ] && ! exited "$raylet"; do
    if [ -n "$asking" ] && ! kill -0 "$asking" 2>/dev/null; then
      if ! wait "$asking"; then
        say "SIGTERM: the GCS did not take the drain: stopping at once"
        return
      fi
      asking=""
    fi
    sleep 0.5
  done
  [ -z "$asking" ] || kill -TERM "$asking" 2>/dev/null
  if exited "$raylet"; then
    say "SIGTERM: the node is drained"
  else
    say "SIGTERM: the node did not finish draining within $seconds s: stopping it"
  fi
}

on_sigterm() {
  local raylet seconds=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-30}
  trap '' TERM
  if [ -n "$starting" ]; then
    kill -TERM "$starting" 2>/dev/null
    wait "$starting"
    starting=""
    list_ray_processes
    if [ "${#ray_labels[@]}" -eq 0 ]; then
      say "SIGTERM while the node starts: its start stopped"
      exit 0
    fi
  fi
  raylet=$(raylet_pid)
  if [ "$seconds" -gt 0 ] && [ -n "$raylet" ]; then
    drain "$seconds" "$raylet"
  fi
  stop_ray
  say "Ray stopped"
  exit 0
}

# Once it exists, links the autoscaler's events file into this session's events, where the dashboard reads them.
link_autoscaler_events() {
  local events="$RAY_SESSION/logs/events"
  if [ -n "$autoscaler_events" ] && [ -d "$events" ] && [ -f "$autoscaler_events" ]; then
    ln -sfn "$autoscaler_events" "$events/" && autoscaler_events=""
  fi
}

# What a Ray process that exited left in its own log: its last lines, if it has a log of that name.
show_log() {
  local log
  for log in "$RAY_SESSION/logs/$1.out" "$RAY_SESSION/logs/$1.err"; do
    if [ -s "$log" ]; then
      say "the last lines of $log:"
      tail -n 20 "$log"
    fi
  done
}

on_exit_of() {
  local pid=$1 label=$2
  if [ "$label" = raylet ] && grep -qs "$DRAINED_WORDS" "$RAY_SESSION/logs/raylet.out"; then
    say "the raylet exited: its node was drained (the pod is to be deleted); waiting for SIGTERM"
    stop_ray
    ray_started=()
    ray_labels=()
    return
  fi
  say "Ray's $label (pid $pid) exited: stopping the node; the container exits for Kubernetes to restart it"
  show_log "${label%.py}"
  stop_ray
  exit 1
}

watch_node() {
  local pid
  while true; do
    for pid in "${!ray_started[@]}"; do
      if exited "$pid"; then
        on_exit_of "$pid" "${ray_labels[$pid]}"
        break
      fi
    done
    link_autoscaler_events
    sleep "$CHECK_SECONDS" &
    wait $!
  done
}

run_node() {
  local status
  trap on_sigterm TERM
  "$@" &
  starting=$!
  wait "$starting"
  status=$?
  starting=""
  if [ "$status" -ne 0 ]; then
    say "the node's start ended with $status"
    exit "$status"
  fi
  list_ray_processes
  if [ "${#ray_labels[@]}" -eq 0 ]; then
    say "no Ray process left by the start to watch: this shell must be the container's PID 1"
    exit 1
  fi
  say "watching Ray's processes: ${ray_labels[*]}"
  watch_node
}
