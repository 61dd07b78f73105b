#!/usr/bin/env bash
# Stops one Ray cluster started on this machine, and only it:
#   - the processes whose command line names its temp dir (GCS, raylet, dashboard, workers);
#   - the Ray client server bound to its GCS port;
#   - every descendant of those. The dashboard and runtime-env agents rename themselves
#     (`ray::DashboardAgent`) and keep no trace of the temp dir. Once the raylet is gone they
#     linger for a minute or two as orphans.
# `ray stop` would end every Ray process on the machine, another engineer's cluster included.
#
#   bash stop_ray_tree.sh TEMP_DIR GCS_PORT
#
# Exits 1 if a process of the cluster is still alive afterwards.
set -u
TMP="${1:?usage: stop_ray_tree.sh TEMP_DIR GCS_PORT}"
PORT="${2:?usage: stop_ray_tree.sh TEMP_DIR GCS_PORT}"

roots() {
    # This script's own command line names TMP too: leave it and its parent out.
    { pgrep -f -- "$TMP"; pgrep -f -- "ray.util.client.server --address=[^ ]*:$PORT( |\$)"; } |
        grep -vx -e "$$" -e "$PPID" | sort -u
}

tree() {
    local all frontier next p
    frontier=$(roots)
    all=$frontier
    while [ -n "$frontier" ]; do
        next=""
        for p in $frontier; do next="$next $(pgrep -P "$p" | tr '\n' ' ')"; done
        frontier=$(echo $next)
        all="$all $frontier"
    done
    echo $all
}

alive() {
    # A zombie (exited, not yet reaped by its parent) does not count: it runs nothing.
    local p state left=""
    for p in "$@"; do
        state=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)
        [ -n "$state" ] && [ "$state" != Z ] && left="$left $p"
    done
    echo $left
}

pids=$(tree)
[ -z "$pids" ] && exit 0
kill -TERM $pids 2>/dev/null
for _ in $(seq 50); do
    [ -z "$(alive $pids)" ] && break
    sleep 0.2
done
left=$(alive $pids)
[ -n "$left" ] && kill -KILL $left 2>/dev/null
sleep 0.2
left=$(alive $pids)
if [ -n "$left" ]; then
    echo "Ray processes left behind: $left" >&2
    exit 1
fi
exit 0
