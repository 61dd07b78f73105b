#!/usr/bin/env bash
# End to end: `ray up` (local provider, 127.0.0.1) -> `ray submit` of a recipe
# with overrides -> outputs checked -> `ray down`. The cluster launcher works
# over SSH and rsync even for 127.0.0.1, so this script installs
# openssh-server, rsync and netcat from Debian's packages if they are missing
# and runs an sshd of its own on a spare loopback port with a key made for the
# run. Everything it starts or changes is undone on exit.
#
#   bash tests/workflows/ray_up_local.sh OUT_DIR
#
# `ray up` and `ray down` run a bare `ray stop` on the head, which ends every
# Ray process on the machine. Here the head is this machine, so the login
# shell the launcher uses gets a `ray` shim first on PATH whose `stop` ends
# only this cluster's processes (they all carry its private temp dir); every
# other `ray` command is the real one.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${1:?usage: ray_up_local.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
VENV_BIN="$(dirname "$(command -v python)")"
export PATH="$VENV_BIN:$PATH" RAY_USAGE_STATS_ENABLED=0
t0=$(date +%s)

need=()
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v rsync >/dev/null || need+=(rsync)
command -v nc >/dev/null || need+=(netcat-openbsd)
command -v ssh >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]} (Debian packages)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

W="$OUT/ssh"
rm -rf "$W"
mkdir -p "$W" /run/sshd
chmod 700 "$W"
SSH_PORT=$((30000 + RANDOM % 10000))
RAY_PORT=$((SSH_PORT + 1))
ssh-keygen -q -t ed25519 -N "" -f "$W/host_key"
ssh-keygen -q -t ed25519 -N "" -f "$W/id"
cp "$W/id.pub" "$W/authorized_keys"
cat >"$W/sshd_config" <<CFG
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $W/host_key
AuthorizedKeysFile $W/authorized_keys
PidFile $W/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
UsePAM no
StrictModes no
CFG

# The launcher runs every remote command in a login shell that resets PATH
# (a bare `python`, a bare `ray stop`): activate this virtualenv there, in a
# block removed on exit.
MARK="# gentrain-ray-up-local"
BASHRC="$HOME/.bashrc"
cleanup() {
    set +e
    [ -f "$OUT/cluster.yaml" ] && timeout 120 ray down -y "$OUT/cluster.yaml" >"$OUT/down.log" 2>&1
    "$W/bin/ray" stop >/dev/null 2>&1
    [ -f "$W/sshd.pid" ] && kill "$(cat "$W/sshd.pid")" 2>/dev/null
    [ -f "$BASHRC" ] && sed -i "/$MARK/d" "$BASHRC"
}
trap cleanup EXIT
RAY_TMP="/tmp/gtu-$RAY_PORT"  # short: Ray puts unix sockets under it
mkdir -p "$W/bin"
cat >"$W/bin/ray" <<SHIM
#!/usr/bin/env bash
if [ "\$1" = stop ]; then
    bash "$ROOT/tests/workflows/stop_ray_tree.sh" "$RAY_TMP" "$RAY_PORT"
    exit \$?
fi
exec "$VENV_BIN/ray" "\$@"
SHIM
chmod +x "$W/bin/ray"
echo "export PATH=$W/bin:$VENV_BIN:\$PATH RAY_USAGE_STATS_ENABLED=0 $MARK" >>"$BASHRC"

echo "== sshd on 127.0.0.1:$SSH_PORT"
/usr/sbin/sshd -f "$W/sshd_config"
for _ in $(seq 50); do nc -z 127.0.0.1 "$SSH_PORT" && break; sleep 0.1; done

cat >"$OUT/cluster.yaml" <<CFG
cluster_name: gentrain-e2e-$SSH_PORT
provider:
  type: local
  head_ip: 127.0.0.1
  worker_ips: []
auth:
  ssh_user: $(whoami)
  ssh_private_key: $W/id
  ssh_proxy_command: nc %h $SSH_PORT
max_workers: 0
upscaling_speed: 1.0
idle_timeout_minutes: 5
file_mounts: {}
cluster_synced_files: []
file_mounts_sync_continuously: false
rsync_exclude: []
rsync_filter: []
initialization_commands: []
# The project is already installed in this virtualenv (the head is this machine).
setup_commands:
  - python -c "import engine, ray; print('gentrain on the head:', engine.__file__)"
head_setup_commands: []
worker_setup_commands: []
head_start_ray_commands:
  - ray stop
  - ray start --head --node-ip-address=127.0.0.1 --port=$RAY_PORT --num-cpus=2 --include-dashboard=false --temp-dir=$RAY_TMP --autoscaling-config=~/ray_bootstrap_config.yaml
worker_start_ray_commands: []
CFG

echo "== ray up"
timeout 180 ray up -y --no-config-cache "$OUT/cluster.yaml" >"$OUT/up.log" 2>&1 || { tail -40 "$OUT/up.log"; exit 1; }
t_up=$(date +%s)

echo "== ray submit recipes/quickstart.py with overrides"
timeout 300 ray submit --no-config-cache "$OUT/cluster.yaml" "$ROOT/recipes/quickstart.py" -- \
    --smoke "run.output_dir=$OUT/runs" run.name=submitted trainer.epochs=2 model.latent_dim=4 \
    >"$OUT/submit.log" 2>&1 || { tail -40 "$OUT/submit.log"; exit 1; }
t_submit=$(date +%s)

echo "== outputs"
grep -q "run submitted finished" "$OUT/submit.log"
grep -q "latent_dim: 4" "$OUT/runs/submitted/config.yaml"
ls "$OUT"/runs/submitted/checkpoints/step=*.pt
test "$(tail -n +2 "$OUT/runs/submitted/metrics.csv" | wc -l)" -eq 2
ls "$OUT"/runs/submitted/samples/*.png

echo "== ray down"
timeout 120 ray down -y "$OUT/cluster.yaml" >"$OUT/down.log" 2>&1
rm -f "$OUT/cluster.yaml"
t_down=$(date +%s)
sleep 1
if pgrep -f -- "$RAY_TMP" >/dev/null; then echo "Ray processes left behind" >&2; exit 1; fi
echo "ray up/submit/down workflow passed in $((t_down - t0))s (up $((t_up - t0))s, submit $((t_submit - t_up))s, down $((t_down - t_submit))s)"
