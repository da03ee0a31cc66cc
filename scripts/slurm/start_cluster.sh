#!/usr/bin/env bash
# Start a single-node SLURM cluster on localhost (for the integration test; needs root and apt).
# Installs Debian's slurm-wlm and munge if missing, writes /etc/slurm/slurm.conf, starts munged,
# slurmctld and slurmd, and waits until the node is idle. Stop it with stop_cluster.sh.
# Every start is a fresh cluster: daemons left running are stopped and the saved state is wiped, since
# jobs recovered from an earlier run (e.g. a copy of this machine's disk) can hold the node allocated.
set -euo pipefail

if ! command -v slurmctld > /dev/null || ! command -v munged > /dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge > /dev/null
fi

state=/var/spool/advdistill-slurm
bash "$(dirname "$0")/stop_cluster.sh"
rm -rf "$state"
mkdir -p /etc/slurm "$state/ctld" "$state/d" /var/log/slurm /run/munge
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=advdistill-test
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
NodeName=localhost CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --force 2> /dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2> /dev/null
fi
chown -R munge:munge /etc/munge /run/munge 2> /dev/null || true
chmod 400 /etc/munge/munge.key
munged --force
slurmctld -c
slurmd -c -N localhost

for _ in $(seq 60); do
    state_now=$(sinfo -h -N -o %t 2> /dev/null || true)
    if [ "$state_now" = "idle" ]; then
        echo "slurm cluster up: $(sinfo -h -o '%P %D %t %c CPUs')"
        exit 0
    fi
    scontrol update nodename=localhost state=resume > /dev/null 2>&1 || true
    sleep 1
done
echo "slurm node did not become idle; sinfo says: $(sinfo 2>&1)" >&2
exit 1
