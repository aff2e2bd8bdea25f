#!/usr/bin/env bash
# Bring up a throwaway single-node SLURM cluster on this machine for tests/test_slurm.py.
#
#   sudo tests/slurm/setup.sh            # prints the SLURM_CONF line to export
#   export SLURM_CONF=/tmp/medtune-slurm/etc/slurm.conf; sinfo; squeue
#   sudo tests/slurm/teardown.sh         # stops the daemons it started
#
# Needs root and Debian/Ubuntu: installs slurmctld slurmd slurm-client munge when missing.
# Everything lives under $MEDTUNE_SLURM_DIR (default /tmp/medtune-slurm): slurm.conf and
# gres.conf (linked from /etc/slurm/, which must not hold a real configuration), state,
# logs, its own munged on its own socket and key, and its own ports (16817/16818), so
# it does not disturb a system munge.
#
# The node: Gres=gpu:$MEDTUNE_SLURM_GPUS (default 2) backed by character devices
# $DIR/dev/fakegpuN (mknod c 1 3, the same device numbers as /dev/null). Because they
# are character devices, SLURM sets CUDA_VISIBLE_DEVICES and SLURM_STEP_GPUS for jobs
# asking for GPUs; with plain files it would set neither. The node is declared as a
# typical 2-GPU box ($MEDTUNE_SLURM_CPUS CPUs, default 32; $MEDTUNE_SLURM_MEM_MB MB,
# default 192000, or the real values when larger) with SlurmdParameters=config_overrides,
# so the production profile's requests fit on any test machine; nothing enforces them.
set -euo pipefail

DIR=${MEDTUNE_SLURM_DIR:-/tmp/medtune-slurm}
NGPUS=${MEDTUNE_SLURM_GPUS:-2}
HERE=$(cd "$(dirname "$0")" && pwd)

die() {
    echo "medtune slurm setup: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "must run as root (it installs Debian packages and starts slurmctld, slurmd and munged); run 'make test' as root, or set MEDTUNE_SKIP_SLURM_TEST=1 to skip the SLURM test"

mkdir -p "$DIR/log"
have_all() { command -v slurmctld && command -v slurmd && command -v sbatch && command -v munged; } >/dev/null
if ! have_all; then
    command -v apt-get >/dev/null || die "slurmctld/slurmd/sbatch/munged missing and no apt-get to install them (needs Debian/Ubuntu packages slurmctld slurmd slurm-client munge)"
    echo "medtune slurm setup: installing slurmctld slurmd slurm-client munge with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >"$DIR/log/apt.log" 2>&1 || die "apt-get update failed: $(tail -5 "$DIR/log/apt.log")"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >>"$DIR/log/apt.log" 2>&1 ||
        die "apt-get install slurmctld slurmd slurm-client munge failed: $(tail -5 "$DIR/log/apt.log")"
    have_all || die "packages installed but slurmctld/slurmd/sbatch/munged still not on PATH ($PATH)"
fi

# /etc/slurm/{slurm,gres}.conf must name this cluster too: the plugin's job step drops
# SLURM_CONF before its inner srun, which then reads the default path. Only links of
# our own are ever replaced there; a real configuration stops the setup.
for f in slurm.conf gres.conf; do
    if [ -e "/etc/slurm/$f" ] || [ -L "/etc/slurm/$f" ]; then
        [ "$(readlink "/etc/slurm/$f")" = "$DIR/etc/$f" ] ||
            die "/etc/slurm/$f exists and is not this test cluster's; refusing to replace a real SLURM configuration (move it away, or set MEDTUNE_SKIP_SLURM_TEST=1)"
    fi
done

# a previous instance of ours (pid files under $DIR) goes first
"$HERE/teardown.sh" >/dev/null 2>&1 || true
trap 'status=$?; [ "$status" = 0 ] || "$HERE/teardown.sh" >/dev/null 2>&1' EXIT

mkdir -p "$DIR"/{etc,spool/ctld,spool/d,log,run,munge,dev}
chmod 0755 "$DIR" "$DIR"/{etc,spool,log,run,dev}
chmod 0755 "$DIR/munge"  # clients need x on the socket's folder; the key itself is 0400
rm -rf "$DIR"/spool/ctld/* "$DIR"/spool/d/* "$DIR"/run/* "$DIR"/etc/*

# --- munge: own key, own socket -----------------------------------------------------
if [ ! -s "$DIR/munge/munge.key" ]; then
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 0400 "$DIR/munge/munge.key"
SOCKET=$DIR/munge/munge.socket.2
munged --force --socket="$SOCKET" --key-file="$DIR/munge/munge.key" --pid-file="$DIR/run/munged.pid" \
    --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" ||
    die "munged did not start: $(tail -5 "$DIR/log/munged.log" 2>/dev/null)"
for _ in $(seq 50); do [ -S "$SOCKET" ] && break; sleep 0.1; done
munge -n --socket="$SOCKET" | unmunge --socket="$SOCKET" >/dev/null || die "munge round trip failed"

# --- fake GPUs: character devices --------------------------------------------------
for i in $(seq 0 $((NGPUS - 1))); do
    dev=$DIR/dev/fakegpu$i
    [ -c "$dev" ] || { rm -f "$dev"; mknod "$dev" c 1 3 || die "mknod $dev failed"; }
done

# --- configuration -----------------------------------------------------------------
HOST=$(hostname -s)
read -r REAL_CPUS REAL_MEM < <(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*RealMemory=\([0-9]*\).*/\1 \2/p')
CPUS=${MEDTUNE_SLURM_CPUS:-32}
MEM=${MEDTUNE_SLURM_MEM_MB:-192000}
[ "${REAL_CPUS:-0}" -gt "$CPUS" ] && CPUS=$REAL_CPUS
[ "${REAL_MEM:-0}" -gt "$MEM" ] && MEM=$REAL_MEM

cat >"$DIR/etc/slurm.conf" <<EOF
# medtune test cluster, written by tests/slurm/setup.sh; use with SLURM_CONF=$DIR/etc/slurm.conf
ClusterName=medtune-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# keep finished jobs visible to squeue/scontrol for 10 minutes (no slurmdbd here)
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
DefMemPerCPU=1000
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:$NGPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

{
    echo "# medtune test cluster: fake GPUs (character devices, see setup.sh)"
    for i in $(seq 0 $((NGPUS - 1))); do
        echo "NodeName=$HOST Name=gpu File=$DIR/dev/fakegpu$i"
    done
} >"$DIR/etc/gres.conf"

mkdir -p /etc/slurm
for f in slurm.conf gres.conf; do
    ln -sfn "$DIR/etc/$f" "/etc/slurm/$f"
done
export SLURM_CONF=$DIR/etc/slurm.conf

# --- daemons -----------------------------------------------------------------------
show_logs() {
    for f in "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log; do
        [ -f "$f" ] && { echo "--- $f"; tail -20 "$f"; }
    done >&2
}
slurmctld -c || { show_logs; die "slurmctld did not start"; }
slurmd -N "$HOST" || { show_logs; die "slurmd did not start"; }

state=""
for _ in $(seq 120); do
    for daemon in slurmctld slurmd; do
        pid=$(cat "$DIR/run/$daemon.pid" 2>/dev/null || true)
        if [ -n "$pid" ] && [ ! -d "/proc/$pid" ]; then show_logs; die "$daemon exited (see $DIR/log/$daemon.log)"; fi
    done
    state=$(timeout 5 sinfo -h -N -n "$HOST" -o %T 2>/dev/null || true)
    case "$state" in
    idle) break ;;
    down* | drain* | fail*) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
done
if [ "$state" != idle ]; then
    show_logs
    die "node $HOST did not become idle (state: '${state:-no answer from slurmctld}')"
fi
echo "medtune slurm setup: node $HOST idle ($CPUS CPUs, $MEM MB, gpu:$NGPUS); export SLURM_CONF=$SLURM_CONF"
