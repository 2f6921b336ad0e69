#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (for tests/test_slurm.py, or to try hydra/launcher=slurm locally).
#   scripts/slurm_local.sh start [STATE_DIR]   installs slurm-wlm and munge (Debian) when missing, writes
#                                              STATE_DIR/slurm.conf for this host, starts munged, slurmctld, slurmd
#   scripts/slurm_local.sh stop [STATE_DIR]    stops the three daemons again
# Clients need SLURM_CONF=STATE_DIR/slurm.conf (printed by start). Runs as root (package install, munge key).
# No accounting daemon: jobs are followed with squeue / scontrol.
set -euo pipefail
ACTION=${1:?usage: slurm_local.sh start|stop [STATE_DIR]}
STATE=$(mkdir -p "${2:-/tmp/speechvq-slurm}" && cd "${2:-/tmp/speechvq-slurm}" && pwd)
HOST=$(hostname -s)

stop() {
    for name in slurmd slurmctld munged; do
        if [[ -f "$STATE/$name.pid" ]]; then
            kill "$(cat "$STATE/$name.pid")" 2>/dev/null || true
            rm -f "$STATE/$name.pid"
        fi
    done
}

if [[ "$ACTION" == stop ]]; then
    stop
    exit 0
fi
[[ "$ACTION" == start ]] || { echo "unknown action $ACTION" >&2; exit 2; }

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        echo "slurm-wlm / munge missing and cannot be installed here (needs root and apt-get)" >&2
        exit 3
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >"$STATE/apt.log" 2>&1 || {
        apt-get update -q >>"$STATE/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >>"$STATE/apt.log" 2>&1
    }
fi
stop  # a previous cluster in the same folder

mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/munge"
chmod 700 "$STATE/munge"
[[ -s "$STATE/munge/munge.key" ]] || dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$STATE/munge/munge.key"
munged --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
    --pid-file="$STATE/munged.pid" --log-file="$STATE/munged.log" --seed-file="$STATE/munge/munge.seed"

MEMORY_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
cat >"$STATE/slurm.conf" <<CONF
ClusterName=speechvq-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
CredType=cred/munge
SlurmctldPort=${SLURMCTLD_PORT:-16817}
SlurmdPort=${SLURMD_PORT:-16818}
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST CPUs=$(nproc) RealMemory=$MEMORY_MB State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
export SLURM_CONF="$STATE/slurm.conf"
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do  # the node must register and come up idle
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
        echo "SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "the SLURM node did not come up; logs in $STATE" >&2
tail -5 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
exit 4
