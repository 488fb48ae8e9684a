#!/usr/bin/env bash
# Starts one local test node for trying `kube-ssh-tunnel dial` by hand: a real OpenSSH sshd
# and a kubelet stub on 127.0.0.42, using the same sshd_config template and stub as the tests.
# Writes keys/id_ed25519 (if missing) and keys/known_hosts; never touches ~/.ssh.
#   scripts/dev-node.sh        start (or report that it is running)
#   scripts/dev-node.sh stop   stop what it started (by PID)
set -euo pipefail
cd "$(dirname "$0")/.."
ADDR=127.0.0.42
DIR=$PWD/.dev-node
PIDS=$DIR/pids

stop() {
  if [[ -f $PIDS ]]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done < "$PIDS"
    rm -f "$PIDS"
    echo "dev node stopped"
  fi
}
if [[ ${1:-} == stop ]]; then stop; exit 0; fi

if [[ ! -x /usr/sbin/sshd ]]; then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
  else
    echo "dev-node: /usr/sbin/sshd is missing; install it (apt-get install openssh-server)" >&2; exit 2
  fi
fi
if [[ -f $PIDS ]] && xargs -r kill -0 < "$PIDS" 2>/dev/null; then
  echo "dev node already running on $ADDR"; exit 0
fi
stop >/dev/null
if [[ $(id -u) == 0 ]]; then PORT=22; else PORT=2222; fi
mkdir -p "$DIR" keys /run/sshd 2>/dev/null || mkdir -p "$DIR" keys
chmod 700 "$DIR"
[[ -f keys/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C kube-ssh-tunnel-dev -f keys/id_ed25519
[[ -f $DIR/ssh_host_ed25519_key ]] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/ssh_host_ed25519_key"
echo "restrict,port-forwarding,permitopen=\"$ADDR:10250\",permitopen=\"$ADDR:10260\" $(cat keys/id_ed25519.pub)" > "$DIR/authorized_keys"
sed -e "s|@PORT@|$PORT|; s|@LISTEN@|$ADDR|; s|@DIR@|$DIR|g; s|@PERMITOPEN@|$ADDR:10250 $ADDR:10260|; s|@LOGLEVEL@|VERBOSE|" \
  tests/node/sshd_config.template > "$DIR/sshd_config"
if [[ $PORT == 22 ]]; then HOST=$ADDR; else HOST="[$ADDR]:$PORT"; fi
echo "$HOST $(cut -d' ' -f1-2 "$DIR/ssh_host_ed25519_key.pub")" > keys/known_hosts
/usr/sbin/sshd -t -f "$DIR/sshd_config"
/usr/sbin/sshd -D -e -f "$DIR/sshd_config" >/dev/null 2>>"$DIR/sshd.log" </dev/null & echo $! > "$PIDS"
python3 tests/node/kubelet_stub.py --listen $ADDR --name node-1 2>>"$DIR/stub.log" </dev/null >/dev/null & echo $! >> "$PIDS"
for _ in $(seq 100); do
  if (exec 3<>/dev/tcp/$ADDR/$PORT) 2>/dev/null && (exec 3<>/dev/tcp/$ADDR/10250) 2>/dev/null; then
    echo "dev node node-1 up: sshd on $ADDR:$PORT, kubelet stub on $ADDR:10250; stop with scripts/dev-node.sh stop"
    exit 0
  fi
  sleep 0.1
done
echo "dev-node: the node did not come up; see $DIR/sshd.log and $DIR/stub.log" >&2
stop; exit 1
