#!/usr/bin/env bash
# A single-node SLURM on this machine (Debian/Ubuntu, root, no systemd needed): for the real-SLURM
# test and for trying workflow/profiles/slurm on a workstation.
#
#   sudo scripts/slurm/setup_single_node.sh      # idempotent: a second call only checks
#   sudo scripts/slurm/stop_single_node.sh       # stops only the daemons this script started
#
# Installs slurmctld, slurmd, slurm-client and munge with apt-get when missing, writes
# /etc/slurm/slurm.conf (only when absent or written by this script), starts munged, slurmctld and
# slurmd in foreground mode under setsid (no systemd here), records their PIDs in the state
# directory, and waits until `sinfo` shows the node idle.
#
# Environment: MECHFLOW_SLURM_STATE (state directory, default /var/tmp/mechflow-slurm),
# MECHFLOW_SLURM_WAIT (seconds to wait for an idle node, default 90).
set -euo pipefail

STATE=${MECHFLOW_SLURM_STATE:-/var/tmp/mechflow-slurm}
WAIT=${MECHFLOW_SLURM_WAIT:-90}
CONF=/etc/slurm/slurm.conf
MARK="# written by mechflow scripts/slurm/setup_single_node.sh"

log() { echo "setup_single_node: $*" >&2; }
die() { log "$*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (installs packages, starts daemons)"

# A PID file is ours and alive when the process still runs the program we started.
alive() {  # alive NAME
    local pidfile=$STATE/$1.pid pid
    [[ -f $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ -d /proc/$pid ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]]
}

node_idle() { sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }

# --- packages (SLURM 22.05 and munge on Debian 12) -------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sinfo >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

mkdir -p "$STATE"

# Already up (ours from an earlier call, or a site's own SLURM): nothing to start.
if [[ -f $CONF ]] && node_idle; then
    log "SLURM already answers: $(sinfo -h -o '%P %D %T' | tr '\n' ' ')"
    exit 0
fi

# --- munge -----------------------------------------------------------------------------------
if [[ ! -f /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge

# --- slurm.conf ------------------------------------------------------------------------------
if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script: not touching a site's SLURM"
fi
host=$(hostname -s)
# CPUs, Sockets, CoresPerSocket, ThreadsPerCore exactly as slurmd detects them (a mismatch
# drains the node); RealMemory leaves ~1 GiB to the OS.
hw=$(slurmd -C | head -1 | grep -oE '(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=[0-9]+' \
    | sed 's/SocketsPerBoard/Sockets/' | grep -v Boards | tr '\n' ' ')
mem=$(($(free -m | awk '/^Mem:/ {print $2}') - 1024))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat >"$CONF.tmp" <<EOF
$MARK
# One node, no accounting database, no cgroups: a test cluster, not a production setup.
ClusterName=mechflow
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MailProg=/bin/true
# Finished jobs stay visible to squeue for 5 minutes: Snakemake's squeue status query needs it.
MinJobAge=300
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 ${hw}RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
mv "$CONF.tmp" "$CONF"
# stop_single_node.sh parks the file so that SLURM clients fail fast while no controller runs.
rm -f "$CONF.stopped"

# --- daemons ---------------------------------------------------------------------------------
start() {  # start NAME COMMAND...
    local name=$1; shift
    if alive "$name"; then return; fi
    setsid "$@" >"$STATE/$name.out" 2>&1 </dev/null &
    echo $! >"$STATE/$name.pid"
    log "started $name (pid $!)"
}
start munged setpriv --reuid=munge --regid=munge --init-groups munged --foreground
for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
munge -n | unmunge >/dev/null || die "munge does not work (see $STATE/munged.out)"
start slurmctld slurmctld -D
start slurmd slurmd -D

for _ in $(seq "$WAIT"); do
    if node_idle; then
        log "node idle: $(sinfo -h -o '%P %D %T' | tr '\n' ' ')"
        exit 0
    fi
    sleep 1
done
die "node not idle after ${WAIT}s: $(sinfo 2>&1 | tail -2) (logs in /var/log/slurm, $STATE)"
