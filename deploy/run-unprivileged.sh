#!/usr/bin/env bash
# What the image promises, without a Docker engine: the operator runs as an unprivileged
# user (65532, as deploy/Dockerfile's USER) with its certificates in a folder it cannot
# write (a Secret mounted read-only, group-readable as the kubelet mounts it with
# fsGroup), serves the mutual-TLS API and its probes, and writes nothing.
#   deploy/run-unprivileged.sh target/debug/trustscale
set -euo pipefail
# Never a cluster: this run is about the process, and must not touch one.
unset KUBECONFIG KUBERNETES_SERVICE_HOST KUBERNETES_SERVICE_PORT
bin=${1:?usage: deploy/run-unprivileged.sh PATH_TO_TRUSTSCALE}
[[ $(id -u) == 0 ]] || { echo "run-unprivileged: needs root to switch users" >&2; exit 1; }
work=$(mktemp -d)
pid=
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
chmod 755 "$work"
install -m 755 "$bin" "$work/trustscale"
mkdir -p "$work/manifests" "$work/certs"
# A set made once (as an administrator would bring it), then handed over read-only.
timeout 20 "$work/trustscale" operator --manifests "$work/manifests" --cert-dir "$work/certs" \
    --ca-dir /nonexistent --listen 127.0.0.1:0 --metrics-bind-address "" \
    --health-probe-bind-address "" --webhook-bind-address "" --cert-secret-name "" \
    >/dev/null 2>&1 &
gen=$!
for _ in $(seq 100); do [[ -e $work/certs/tls.key ]] && break; sleep 0.1; done
kill "$gen" 2>/dev/null; wait "$gen" 2>/dev/null || true
[[ -e $work/certs/tls.key ]] || { echo "run-unprivileged: no certificate set was generated" >&2; exit 1; }
chown -R root:65532 "$work/certs"
find -L "$work/certs" -type f -exec chmod 0440 {} +
find "$work/certs" -type d -exec chmod 0550 {} +
api=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
health=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
setpriv --reuid=65532 --regid=65532 --clear-groups -- \
    "$work/trustscale" operator --manifests "$work/manifests" --cert-dir "$work/certs" \
    --enable-cert-rotation=false --ca-dir /nonexistent --listen "127.0.0.1:$api" \
    --metrics-bind-address "" --health-probe-bind-address "127.0.0.1:$health" \
    --webhook-bind-address "" >"$work/log" 2>&1 &
pid=$!
ready=
for _ in $(seq 100); do
    if curl -sf "http://127.0.0.1:$health/readyz" >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.1
done
[[ -n $ready ]] || { cat "$work/log" >&2; echo "run-unprivileged: not ready" >&2; exit 1; }
owner=$(ps -o uid= -p "$pid" | tr -d ' ')
[[ $owner == 65532 ]] || { echo "run-unprivileged: runs as uid $owner" >&2; exit 1; }
body=$(curl -sS --max-time 5 --cacert "$work/certs/ca.crt" --cert "$work/certs/tls.crt" \
    --key "$work/certs/tls.key" "https://localhost:$api/apis/external.metrics.k8s.io/v1beta1")
grep -q '"APIResourceList"' <<<"$body" || { echo "run-unprivileged: API answered: $body" >&2; exit 1; }
# Negative control: the folder really is read-only to that user.
if setpriv --reuid=65532 --regid=65532 --clear-groups -- touch "$work/certs/probe" 2>/dev/null; then
    echo "run-unprivileged: the certificate folder is writable" >&2; exit 1
fi
echo "run-unprivileged: uid 65532, read-only certificates, API and probes answer"
