#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by start_cluster.sh (jobs are cancelled).
set -u
scancel --user="$(id -un)" > /dev/null 2>&1 || true
for daemon in slurmd slurmctld munged; do
    pkill -x "$daemon" > /dev/null 2>&1 || true
done
for _ in $(seq 20); do
    pgrep -x slurmd > /dev/null || pgrep -x slurmctld > /dev/null || pgrep -x munged > /dev/null || exit 0
    sleep 0.5
done
for daemon in slurmd slurmctld munged; do
    pkill -9 -x "$daemon" > /dev/null 2>&1 || true
done
exit 0
