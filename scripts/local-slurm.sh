#!/usr/bin/env bash
# A real SLURM cluster on this machine, from Debian's packages (slurmctld, slurmd,
# slurm-client, munge), for development, the tests and the demo.
#
#   scripts/local-slurm.sh up       # start munged, slurmctld, the slurmds (idempotent)
#   scripts/local-slurm.sh down     # stop only the daemons this script started
#   scripts/local-slurm.sh status   # sinfo
#
# Partition `debug` (the default) is this machine as one node, as most tests want it.
# Partition `multi` is two more nodes, n1 and n2: further slurmd daemons on this machine
# (`slurmd -N n1`, each on its own port), so a job can span two nodes and run a step on
# each with `srun -w n2`. /etc/hosts gets n1 and n2 on their own loopback addresses
# (127.0.2.1, 127.0.2.2): what binds a node's address is distinct from the other nodes'.
# Every node has 4 emulated GPUs: a GRES `gpu` whose device files are stand-ins (symlinks
# to /dev/null), so SLURM allocates them and sets SLURM_JOB_GPUS, SLURM_STEP_GPUS and
# CUDA_VISIBLE_DEVICES exactly as on a GPU cluster.
#
# Everything lives under $LLMGW_SLURM_DIR (default /tmp/llmgw-slurm): slurm.conf,
# gres.conf, state, spool, logs, pid files and the stand-in devices.
# /etc/slurm/slurm.conf is made a symlink to our slurm.conf (only when it does not exist
# or already is that symlink), so sbatch/squeue/srun find the cluster without SLURM_CONF.
# Needs root (SlurmUser=root; jobs run as root).
#
# `up` is idempotent, and the cluster is shared by concurrent test runs: when the config
# it would write differs from the one the running daemons were started with (kept as
# etc/running-*.conf), it waits until the queue is empty (at most 10 minutes), then
# restarts the controller and the slurmds with the new config. A config file rewritten
# meanwhile (by an older copy of this script) is only written back: no restart.
#
# No slurmdbd: `sacct` does not work here. Finished jobs stay visible in
# `scontrol show job` for MinJobAge seconds, which is what `llmgw status` falls back on.
set -euo pipefail

DIR=${LLMGW_SLURM_DIR:-/tmp/llmgw-slurm}
CONF=$DIR/etc/slurm.conf
GRES=$DIR/etc/gres.conf
ETC_CONF=/etc/slurm/slurm.conf
MUNGE_SOCKET=/run/munge/munge.socket.2
HOST=$(hostname -s)
# The nodes of partition `multi`: name, slurmd port, loopback address.
EXTRA_NODES=(n1 n2)
declare -A NODE_PORT=([n1]=7818 [n2]=7819)
declare -A NODE_IP=([n1]=127.0.2.1 [n2]=127.0.2.2)
GPUS_PER_NODE=4
# The configs the running daemons were started with.
RUNNING_CONF=$DIR/etc/running-slurm.conf
RUNNING_GRES=$DIR/etc/running-gres.conf

say() { printf 'local-slurm: %s\n' "$*"; }
die() {
  printf 'local-slurm: %s\n' "$*" >&2
  exit 1
}

# Every node's name: this machine's first, then partition multi's.
all_nodes() { echo "$HOST" "${EXTRA_NODES[@]}"; }

# A pid file's process, if it is still alive and still that daemon (pids get reused).
# The daemon is named by the file up to its first `-` (slurmd-n1.pid: slurmd).
alive() {
  local pidfile=$1 pid comm
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  comm=$(basename "$pidfile" .pid)
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "${comm%%-*}" ]
}

install_missing() {
  local missing=()
  command -v slurmctld >/dev/null 2>&1 || missing+=(slurmctld)
  command -v slurmd >/dev/null 2>&1 || missing+=(slurmd)
  command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
  command -v munged >/dev/null 2>&1 || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Replaces $1 with $1.new when they differ, else drops $1.new.
install_if_changed() {
  if [ -f "$1" ] && cmp -s "$1" "$1.new"; then
    rm -f "$1.new"
  else
    mv "$1.new" "$1"
  fi
}

# True when the running daemons were started with another config than the current one.
config_changed() {
  ! { cmp -s "$CONF" "$RUNNING_CONF" && cmp -s "$GRES" "$RUNNING_GRES"; }
}

write_conf() {
  # The node line from slurmd itself: real CPU count, sockets, cores and memory.
  local node
  node=$(slurmd -C | head -n1)
  case $node in
    NodeName=*) ;;
    *) die "slurmd -C did not describe this node: $node" ;;
  esac
  mkdir -p "$DIR/etc" "$DIR/state" "$DIR/log" "$DIR/munge" "$DIR/dev"
  local extra="" gres="" n i last=$((GPUS_PER_NODE - 1))
  for n in "${EXTRA_NODES[@]}"; do
    extra+="${node/#NodeName=$HOST/NodeName=$n NodeHostname=$HOST NodeAddr=127.0.0.1 Port=${NODE_PORT[$n]}} Gres=gpu:$GPUS_PER_NODE State=UNKNOWN"$'\n'
  done
  for n in $(all_nodes); do
    mkdir -p "$DIR/spool-$n"
    for i in $(seq 0 $last); do
      # A stand-in device: slurmd only checks that it is a character device.
      [ -e "$DIR/dev/$n-gpu$i" ] || ln -sf /dev/null "$DIR/dev/$n-gpu$i"
    done
    gres+="NodeName=$n Name=gpu File=$DIR/dev/$n-gpu[0-$last] Flags=nvidia_gpu_env"$'\n'
  done
  cat >"$CONF.new" <<CONF
# Written by scripts/local-slurm.sh: llmgw's local cluster for its tests and demo.
ClusterName=llmgw-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
# Finished jobs stay in 'scontrol show job' for an hour (there is no slurmdbd for sacct).
MinJobAge=3600
# scancel: SIGTERM, then SIGKILL after this many seconds.
KillWait=30
InactiveLimit=0
SlurmdTimeout=60
SchedulerParameters=sched_interval=2
GresTypes=gpu
SlurmctldPidFile=$DIR/slurmctld.pid
# %n: one slurmd per node name on this machine.
SlurmdPidFile=$DIR/slurmd-%n.pid
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool-%n
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
$node Gres=gpu:$GPUS_PER_NODE State=UNKNOWN
${extra}# Two cores is little: let up to 4 jobs share each core so tests and a demo fit together.
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
# Two more nodes on this machine, for jobs that span nodes.
PartitionName=multi Nodes=$(
    IFS=,
    echo "${EXTRA_NODES[*]}"
  ) MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
  printf '# Written by scripts/local-slurm.sh: emulated GPUs (stand-in device files).\n%s' \
    "$gres" >"$GRES.new"
  install_if_changed "$CONF"
  install_if_changed "$GRES"
  if [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$CONF" ]; then
    :
  elif [ -e "$ETC_CONF" ] || [ -L "$ETC_CONF" ]; then
    say "$ETC_CONF exists and is not ours; use SLURM_CONF=$CONF with the SLURM commands"
  else
    mkdir -p "$(dirname "$ETC_CONF")"
    ln -s "$CONF" "$ETC_CONF"
  fi
}

# n1 and n2 resolve to their own loopback addresses.
write_hosts() {
  local n
  for n in "${EXTRA_NODES[@]}"; do
    if ! getent hosts "$n" >/dev/null 2>&1; then
      say "adding $n (${NODE_IP[$n]}) to /etc/hosts"
      printf '%s %s # llmgw local-slurm\n' "${NODE_IP[$n]}" "$n" >>/etc/hosts
    fi
  done
}

start_munge() {
  if [ -S "$MUNGE_SOCKET" ] && munge -n </dev/null | unmunge >/dev/null 2>&1; then
    return 0 # a munged (ours or the system's) already answers
  fi
  if [ ! -r /etc/munge/munge.key ]; then
    # Some images install munge without running its key generation; make one.
    say "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chmod 0400 /etc/munge/munge.key
    if id munge >/dev/null 2>&1; then chown munge: /etc/munge/munge.key; fi
  fi
  [ -r /etc/munge/munge.key ] || die "/etc/munge/munge.key is missing and could not be created; reinstall munge (apt-get install --reinstall munge)"
  mkdir -p /run/munge
  say "starting munged"
  munged --force --socket="$MUNGE_SOCKET" --pid-file="$DIR/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed"
  for _ in $(seq 50); do
    munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged did not come up; see $DIR/log/munged.log"
}

start_daemons() {
  if ! alive "$DIR/slurmctld.pid"; then
    say "starting slurmctld"
    slurmctld -f "$CONF" || die "slurmctld failed to start; see $DIR/log/slurmctld.log"
    cp "$CONF" "$RUNNING_CONF"
    cp "$GRES" "$RUNNING_GRES"
  fi
  local n
  for n in $(all_nodes); do
    if ! alive "$DIR/slurmd-$n.pid"; then
      say "starting slurmd for node $n"
      slurmd -f "$CONF" -N "$n" || die "slurmd for node $n failed to start; see $DIR/log/slurmd-$n.log"
    fi
  done
  # An older checkout's copy of this script looks for this machine's slurmd here.
  ln -sfn "slurmd-$HOST.pid" "$DIR/slurmd.pid"
  # Wait until the controller answers and every node accepts jobs.
  local state="" i
  for n in $(all_nodes); do
    for i in $(seq 150); do
      state=$(sinfo -h -n "$n" -o '%t' 2>/dev/null | head -n1 || true)
      case $state in
        idle* | mix* | alloc* | comp*) continue 2 ;;
        down* | drain* | drng*)
          # A node left down by an earlier run (ReturnToService covers most cases).
          if [ $((i % 10)) -eq 0 ]; then
            scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true
          fi
          ;;
      esac
      sleep 0.2
    done
    die "node $n is not ready (state: ${state:-unknown}); see $DIR/log/slurmctld.log and $DIR/log/slurmd-$n.log"
  done
}

stop_pidfile() {
  local name=$1 pidfile=$2
  if alive "$pidfile"; then
    local pid
    pid=$(cat "$pidfile")
    say "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

# The slurmds (also the one an older version of this script started) and the controller.
stop_slurm() {
  local n
  for n in $(all_nodes); do stop_pidfile "slurmd for node $n" "$DIR/slurmd-$n.pid"; done
  stop_pidfile slurmd "$DIR/slurmd.pid"
  stop_pidfile slurmctld "$DIR/slurmctld.pid"
}

# The config changed while daemons run with the old one: restart them once the queue is
# empty (jobs of concurrent test runs finish first; at most 10 minutes).
restart_for_new_config() {
  local running=0 n i jobs
  alive "$DIR/slurmctld.pid" && running=1
  alive "$DIR/slurmd.pid" && running=1
  for n in $(all_nodes); do alive "$DIR/slurmd-$n.pid" && running=1; done
  [ $running -eq 1 ] || return 0
  for i in $(seq 120); do
    jobs=$(squeue -h -o %i 2>/dev/null | wc -l)
    [ "$jobs" -eq 0 ] && break
    [ $((i % 12)) -eq 1 ] && say "the cluster's config changed; waiting for $jobs job(s) to leave the queue before restarting"
    sleep 5
  done
  say "restarting slurmctld and the slurmds with the new config"
  stop_slurm
}

up() {
  [ "$(id -u)" -eq 0 ] || die "run as root (the local cluster runs jobs as root: SlurmUser=root)"
  install_missing
  write_conf
  write_hosts
  if config_changed; then restart_for_new_config; fi
  start_munge
  start_daemons
  say "up: partition debug on node $HOST, partition multi on nodes ${EXTRA_NODES[*]}, $GPUS_PER_NODE emulated GPUs per node (config $CONF)"
  sinfo
}

down() {
  stop_slurm
  stop_pidfile munged "$DIR/munged.pid"
  say "down"
}

status() {
  command -v sinfo >/dev/null 2>&1 || die "sinfo not found; run scripts/local-slurm.sh up"
  local d n
  for d in munged slurmctld $(for n in $(all_nodes); do echo "slurmd-$n"; done); do
    if alive "$DIR/$d.pid"; then
      say "$d running (pid $(cat "$DIR/$d.pid"))"
    else
      say "$d not started by this script"
    fi
  done
  sinfo || die "the controller does not answer; run scripts/local-slurm.sh up"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  status) status ;;
  *)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
