#!/bin/sh
# Entrypoint of a containerized kube-ssh-tunnel test node (tests/node/Dockerfile): the same
# sshd_config template and kubelet stub as the test harness, with
#   - host keys generated on first start (kept in /etc/ssh/kst, so every node has its own),
#     and the public one published as "ADDR KEY" in /hostkeys/$NODE_NAME when mounted;
#   - authorized_keys from /keys/id_ed25519.pub (run `kube-ssh-tunnel keygen` first);
#   - the kubelet stub on the node's address (:10250), a "pod" at $POD_IP and a "service" at
#     $SERVICE_IP, both added to lo (needs CAP_NET_ADMIN; skipped with a warning without it).
# Environment: NODE_NAME, NODE_IP, POD_IP, SERVICE_IP (all optional but NODE_NAME).
set -eu
: "${NODE_NAME:?set NODE_NAME}"
NODE_IP="${NODE_IP:-$(hostname -i | awk '{print $1}')}"
DIR=/etc/ssh/kst
SRC=/opt/kube-ssh-tunnel-node
mkdir -p "$DIR" /run/sshd
[ -f "$DIR/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/ssh_host_ed25519_key"
if [ -d /hostkeys ]; then
    echo "$NODE_IP $(cut -d' ' -f1,2 "$DIR/ssh_host_ed25519_key.pub")" > "/hostkeys/$NODE_NAME.tmp"
    mv "/hostkeys/$NODE_NAME.tmp" "/hostkeys/$NODE_NAME"
fi
if [ -f /keys/id_ed25519.pub ]; then
    # The options `kube-ssh-tunnel keygen` prints: forwarding only, and a forced command that
    # refuses any shell or command (PermitOpen comes from sshd_config).
    printf '%s %s\n' \
        "restrict,port-forwarding,command=\"echo 'this key is for kube-ssh-tunnel port forwarding only' >&2; exit 1\"" \
        "$(cat /keys/id_ed25519.pub)" > "$DIR/authorized_keys"
else
    echo "entrypoint: /keys/id_ed25519.pub is missing; run 'kube-ssh-tunnel keygen' and mount keys/ at /keys" >&2
    : > "$DIR/authorized_keys"
fi
chmod 600 "$DIR/authorized_keys"

# Waits (at most 10 s) until HOST:PORT accepts connections.
wait_port() {
    python3 - "$1" "$2" <<'PY' || echo "entrypoint: nothing listens on $1:$2 after 10 s" >&2
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
PY
}

PERMIT="$NODE_IP:10250 $NODE_IP:10260"
WAIT=""
for extra in ${POD_IP:-} ${SERVICE_IP:-}; do
    if ip addr add "$extra/32" dev lo 2>/dev/null || ip addr show dev lo | grep -q " $extra/"; then
        python3 "$SRC/kubelet_stub.py" --name "$NODE_NAME" --listen "$extra" --http-port 8080 --echo-port 8081 &
        PERMIT="$PERMIT $extra:8080 $extra:8081"
        WAIT="$WAIT $extra:8080"
    else
        echo "entrypoint: cannot add $extra to lo (no CAP_NET_ADMIN?); no stub there" >&2
    fi
done
python3 "$SRC/kubelet_stub.py" --name "$NODE_NAME" --listen "$NODE_IP" &
# sshd comes up only after the services behind it, so a node that accepts SSH serves them.
for hp in $WAIT "$NODE_IP:10250"; do
    wait_port "${hp%:*}" "${hp##*:}"
done

sed -e "s|@PORT@|22|" -e "s|@LISTEN@|0.0.0.0|" -e "s|@DIR@|$DIR|g" \
    -e "s|@PERMITOPEN@|$PERMIT|" -e "s|@LOGLEVEL@|INFO|" \
    "$SRC/sshd_config.template" > "$DIR/sshd_config"
exec /usr/sbin/sshd -D -e -f "$DIR/sshd_config"
