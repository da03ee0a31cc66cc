#!/usr/bin/env bash
# Stop the private cluster that start_cluster.sh DIR started: cancel its jobs, end its daemons (slurmd,
# slurmctld, munged) by the process ids in their pid files, and purge the packages start_cluster.sh had to
# install (DIR/installed-packages), so that the machine is left as it was.
#
#   stop_cluster.sh DIR
set -u

dir=$(realpath "$1")
export SLURM_CONF="$dir/etc/slurm.conf"
if [ -f "$SLURM_CONF" ] && command -v scancel > /dev/null; then
    timeout 20 scancel --user="$(id -un)" > /dev/null 2>&1 || true
fi

# "pid-file process-name" pairs; a pid is only signalled while it still names that daemon
daemons=("$dir/slurmd.pid slurmd" "$dir/slurmctld.pid slurmctld" "$dir/munge/munged.pid munged")
running() {
    local pid
    pid=$(cat "$1" 2> /dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2> /dev/null)" = "$2" ] && echo "$pid"
}
for daemon in "${daemons[@]}"; do
    # shellcheck disable=SC2086
    pid=$(running $daemon) && kill "$pid" 2> /dev/null
done
for _ in $(seq 40); do
    left=0
    for daemon in "${daemons[@]}"; do
        # shellcheck disable=SC2086
        running $daemon > /dev/null && left=1
    done
    [ "$left" -eq 0 ] && break
    sleep 0.5
done
for daemon in "${daemons[@]}"; do
    # shellcheck disable=SC2086
    pid=$(running $daemon) && kill -9 "$pid" 2> /dev/null
done

if [ -s "$dir/installed-packages" ]; then
    # shellcheck disable=SC2046
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq $(cat "$dir/installed-packages") > /dev/null
    echo "purged the $(wc -l < "$dir/installed-packages") packages start_cluster.sh installed"
fi
exit 0
