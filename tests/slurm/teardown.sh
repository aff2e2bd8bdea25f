#!/usr/bin/env bash
# Stop the test cluster tests/slurm/setup.sh started: cancel its jobs, then stop slurmd,
# slurmctld and its munged, each by the pid in its pid file under $MEDTUNE_SLURM_DIR
# (default /tmp/medtune-slurm), and remove its links in /etc/slurm. Its configuration,
# logs and state under that folder stay for inspection.
set -uo pipefail

DIR=${MEDTUNE_SLURM_DIR:-/tmp/medtune-slurm}
export SLURM_CONF=$DIR/etc/slurm.conf

alive() { # pidfile expected-name -> prints the pid when that process still runs
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    running "$pid" "$2" && echo "$pid"
}

running() { # pid expected-name
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] &&
        [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

stop() { # pidfile name
    local pid
    pid=$(alive "$1" "$2") || { rm -f "$1"; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 100); do
        running "$pid" "$2" || { rm -f "$1"; echo "stopped $2 ($pid)"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    rm -f "$1"
    echo "killed $2 ($pid)"
}

if [ -f "$SLURM_CONF" ] && alive "$DIR/run/slurmctld.pid" slurmctld >/dev/null; then
    jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | tr '\n' ' ')
    [ -n "${jobs// /}" ] && timeout 10 scancel $jobs 2>/dev/null && sleep 1
fi
stop "$DIR/run/slurmd.pid" slurmd
stop "$DIR/run/slurmctld.pid" slurmctld
stop "$DIR/run/munged.pid" munged
for f in slurm.conf gres.conf; do # our links only
    [ "$(readlink "/etc/slurm/$f" 2>/dev/null)" = "$DIR/etc/$f" ] && rm -f "/etc/slurm/$f"
done
exit 0
