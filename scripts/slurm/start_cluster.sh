#!/usr/bin/env bash
# Start a private single-node SLURM cluster on localhost (for the integration test; needs root, and apt when
# Debian's slurm-wlm and munge are missing).
#
#   start_cluster.sh DIR [SLURMCTLD_PORT SLURMD_PORT]     then: SLURM_CONF=DIR/etc/slurm.conf sbatch ...
#
# Everything the cluster uses lives in DIR, which must be empty: etc/slurm.conf, the controller's state,
# slurmd's spool, logs and pid files, and a munge daemon of its own (key, socket, pid, log, seed). Nothing is
# written under /etc or /var, so a real installation's configuration is never touched, and the default ports
# are only a default. Jobs need the configuration without SLURM_CONF (Snakemake's jobstep plugin drops every
# SLURM_* variable before its srun), so slurmd runs in a mount namespace of its own in which DIR/etc is
# mounted on /etc/slurm: only slurmd and its jobs see it there. Packages this script had to install are listed
# in DIR/installed-packages, and stop_cluster.sh purges exactly those again: an installed SLURM client makes
# every later snakemake start wait ~10 s in the SLURM executor plugin's `scontrol show config` probe.
set -euo pipefail

mkdir -p -- "$1"
dir=$(realpath -- "$1")
ctld_port=${2:-6817}
slurmd_port=${3:-6818}
if [ -n "$(ls -A -- "$dir")" ]; then
    # stop_cluster.sh purges the packages DIR/installed-packages lists and signals the pids of DIR's pid files
    echo "$dir is not empty: start the cluster in a new or empty folder" >&2
    exit 1
fi

installed_packages() {
    dpkg-query -W -f '${Status} ${Package}\n' | awk '$3 == "installed" {print $4}' | sort
}

if ! command -v slurmctld > /dev/null || ! command -v slurmd > /dev/null || ! command -v munged > /dev/null; then
    installed_packages > "$dir/packages-before"
    apt-get update -qq
    status=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge > /dev/null || status=$?
    installed_packages | comm -13 "$dir/packages-before" - > "$dir/installed-packages"
    [ "$status" -eq 0 ] || exit "$status"
fi

if [ ! -d /etc/slurm ]; then
    echo "/etc/slurm is missing: the slurm packages create it, and slurmd's jobs find DIR/etc mounted there" >&2
    exit 1
fi
mkdir -p "$dir/etc" "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
chmod 700 "$dir/munge"
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/socket" --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"

cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
cat > "$dir/etc/slurm.conf" <<CONF
ClusterName=advdistill-test
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
NodeName=localhost CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF

export SLURM_CONF="$dir/etc/slurm.conf"
slurmctld -c
unshare --mount --propagation private sh -c 'mount --bind "$1/etc" /etc/slurm && exec slurmd -c -N localhost' sh "$dir"

for _ in $(seq 60); do
    state_now=$(sinfo -h -N -o %t 2> /dev/null || true)
    if [ "$state_now" = "idle" ]; then
        echo "slurm cluster up: $(sinfo -h -o '%P %D %t %c CPUs'), SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    scontrol update nodename=localhost state=resume > /dev/null 2>&1 || true
    sleep 1
done
echo "slurm node did not become idle; sinfo says: $(sinfo 2>&1)" >&2
exit 1
