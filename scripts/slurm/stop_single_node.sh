#!/usr/bin/env bash
# Stops the daemons scripts/slurm/setup_single_node.sh started (by their recorded PIDs, nothing
# else), then parks slurm.conf so that SLURM clients left on PATH fail at once instead of waiting
# ~10 s for a controller (Snakemake's SLURM plugin runs `scontrol` at every start).
set -euo pipefail

STATE=${MECHFLOW_SLURM_STATE:-/var/tmp/mechflow-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by mechflow scripts/slurm/setup_single_node.sh"

log() { echo "stop_single_node: $*" >&2; }

# slurmd and slurmctld before munged: they need munge to shut down cleanly.
for name in slurmd slurmctld munged; do
    pidfile=$STATE/$name.pid
    [[ -f $pidfile ]] || continue
    pid=$(<"$pidfile")
    if [[ -d /proc/$pid ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
        kill -TERM "$pid"
        for _ in $(seq 50); do [[ -d /proc/$pid ]] || break; sleep 0.2; done
        if [[ -d /proc/$pid ]]; then kill -KILL "$pid"; fi
        log "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
done

if [[ -f $CONF ]] && grep -qF "$MARK" "$CONF"; then
    mv "$CONF" "$CONF.stopped"
fi
