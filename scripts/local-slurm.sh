#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, from Debian's packages (slurmctld,
# slurmd, slurm-client, munge), for development, the tests and the demo.
#
#   scripts/local-slurm.sh up       # start munged, slurmctld, slurmd (idempotent)
#   scripts/local-slurm.sh down     # stop only the daemons this script started
#   scripts/local-slurm.sh status   # sinfo
#
# Everything lives under $LLMGW_SLURM_DIR (default /tmp/llmgw-slurm): slurm.conf, state,
# spool, logs and pid files. /etc/slurm/slurm.conf is made a symlink to our slurm.conf
# (only when it does not exist or already is that symlink), so sbatch/squeue/srun find
# the cluster without SLURM_CONF. Needs root (SlurmUser=root; jobs run as root).
#
# No slurmdbd: `sacct` does not work here. Finished jobs stay visible in
# `scontrol show job` for MinJobAge seconds, which is what `llmgw status` falls back on.
set -euo pipefail

DIR=${LLMGW_SLURM_DIR:-/tmp/llmgw-slurm}
CONF=$DIR/etc/slurm.conf
ETC_CONF=/etc/slurm/slurm.conf
MUNGE_SOCKET=/run/munge/munge.socket.2
HOST=$(hostname -s)

say() { printf 'local-slurm: %s\n' "$*"; }
die() {
  printf 'local-slurm: %s\n' "$*" >&2
  exit 1
}

# A pid file's process, if it is still alive and still that daemon (pids get reused).
alive() {
  local pidfile=$1 pid
  [ -s "$pidfile" ] || return 1
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$(basename "$pidfile" .pid)" ]
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

write_conf() {
  # The node line from slurmd itself: real CPU count, sockets, cores and memory.
  local node
  node=$(slurmd -C | head -n1)
  case $node in
    NodeName=*) ;;
    *) die "slurmd -C did not describe this node: $node" ;;
  esac
  mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/munge"
  cat >"$CONF.new" <<EOF
# Written by scripts/local-slurm.sh: a single-node cluster for llmgw's tests and demo.
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
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
$node State=UNKNOWN
# Two cores is little: let up to 4 jobs share each core so tests and a demo fit together.
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
  if [ -f "$CONF" ] && cmp -s "$CONF" "$CONF.new"; then
    rm -f "$CONF.new"
  else
    mv "$CONF.new" "$CONF"
  fi
  if [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$CONF" ]; then
    :
  elif [ -e "$ETC_CONF" ] || [ -L "$ETC_CONF" ]; then
    say "$ETC_CONF exists and is not ours; use SLURM_CONF=$CONF with the SLURM commands"
  else
    mkdir -p "$(dirname "$ETC_CONF")"
    ln -s "$CONF" "$ETC_CONF"
  fi
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
  fi
  if ! alive "$DIR/slurmd.pid"; then
    say "starting slurmd"
    slurmd -f "$CONF" || die "slurmd failed to start; see $DIR/log/slurmd.log"
  fi
  # Wait until the controller answers and the node accepts jobs.
  local state=""
  for i in $(seq 150); do
    state=$(sinfo -h -n "$HOST" -o '%t' 2>/dev/null | head -n1 || true)
    case $state in
      idle* | mix* | alloc* | comp*) return 0 ;;
      down* | drain* | drng*)
        # A node left down by an earlier run (ReturnToService covers most cases).
        if [ $((i % 10)) -eq 0 ]; then
          scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
        fi
        ;;
    esac
    sleep 0.2
  done
  die "node $HOST is not ready (state: ${state:-unknown}); see $DIR/log/slurmctld.log and $DIR/log/slurmd.log"
}

up() {
  [ "$(id -u)" -eq 0 ] || die "run as root (the local cluster runs jobs as root: SlurmUser=root)"
  install_missing
  write_conf
  start_munge
  start_daemons
  say "up: partition debug on node $HOST (config $CONF)"
  sinfo
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

down() {
  stop_pidfile slurmd "$DIR/slurmd.pid"
  stop_pidfile slurmctld "$DIR/slurmctld.pid"
  stop_pidfile munged "$DIR/munged.pid"
  say "down"
}

status() {
  command -v sinfo >/dev/null 2>&1 || die "sinfo not found; run scripts/local-slurm.sh up"
  for d in munged slurmctld slurmd; do
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
