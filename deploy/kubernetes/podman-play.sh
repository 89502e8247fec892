#!/usr/bin/env bash
# Prove deployment.yaml with a real engine and no cluster: `podman kube play` runs the
# Deployment's pod (its securityContext, read-only root filesystem, emptyDir, resources, the
# weights claim as a podman volume, the cookie secret from a podman secret holding a Kubernetes
# Secret), then it must become healthy and answer /_stcore/health; `podman kube down` after.
# podman plays Pods, Deployments and PersistentVolumeClaims only (not Service, Ingress or HPA;
# those are checked against the Kubernetes schema in tests/test_deploy.py); it runs one
# replica (see below).
#   env: IMG (localhost/simam-viz:cpu, tagged as the manifest's simam-viz:cpu if it is another)
#        WORK (/tmp/simam-viz-ctr: docker-smoke's podman settings)  WAIT_S (180)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
IMG=${IMG:-localhost/simam-viz:cpu}
WORK=${WORK:-/tmp/simam-viz-ctr}
WAIT_S=${WAIT_S:-180}
export CONTAINERS_CONF="$WORK/containers.conf"
[ -f "$CONTAINERS_CONF" ] || { echo "error: $CONTAINERS_CONF missing: run make docker-smoke first"; exit 2; }
podman image exists "$IMG" || { echo "error: image $IMG missing"; exit 2; }
[ "$IMG" = localhost/simam-viz:cpu ] || podman tag "$IMG" localhost/simam-viz:cpu

PLAY=$(mktemp -d)
pod=""; ctr=""
cleanup() {
  local rc=$?
  [ $rc = 0 ] || [ -z "$ctr" ] || podman logs --tail 20 "$ctr" 2>/dev/null || true
  podman kube down "$PLAY/play.yaml" >/dev/null 2>&1 || true
  # a play that failed half-way leaves its pod (named after the Deployment) behind
  podman pod rm -f "${pod:-simam-viz-pod-0}" >/dev/null 2>&1 || true
  podman secret rm simam-viz >/dev/null 2>&1 || true
  podman volume rm -f simam-viz-weights >/dev/null 2>&1 || true
  # the network kube play made for the pod (left alone while anything else uses it)
  podman network rm podman-default-kube-network >/dev/null 2>&1 || true
  rm -rf "$PLAY"
  exit $rc
}
trap cleanup EXIT

# the Secret the Deployment's secretKeyRef names: podman 4 reads a Secret's `data` (key ->
# base64 value, as JSON) from the podman secret of that name
python3 - "$PLAY/secret.json" <<'EOF'
import base64, json, secrets, sys
value = base64.b64encode(secrets.token_hex(32).encode()).decode()
json.dump({"cookie-secret": value}, open(sys.argv[1], "w"))
EOF
podman secret rm simam-viz >/dev/null 2>&1 || true
podman secret create simam-viz "$PLAY/secret.json" >/dev/null
# The claim (a podman volume) and the Deployment as in this folder, with two changes podman
# 4.3 needs: one replica (it publishes each containerPort on the same host port, so a second
# pod could not bind 8501), and the liveness probe's httpGet run by Python (podman turns an
# httpGet probe into a `curl` command, and the slim image has no curl; it also joins an exec
# probe's words into one `sh -c` line, hence the quotes). podman ignores the startup and
# readiness probes.
PY=$HERE/../../.venv/bin/python
[ -x "$PY" ] || PY=python3
"$PY" - "$HERE/weights-pvc.yaml" "$HERE/deployment.yaml" "$PLAY/play.yaml" <<'EOF'
import sys
import yaml
pvc, deployment, out = sys.argv[1:]
docs = [yaml.safe_load(open(pvc)), yaml.safe_load(open(deployment))]
docs[1]["spec"]["replicas"] = 1
for c in docs[1]["spec"]["template"]["spec"]["containers"]:
    get = c["livenessProbe"].pop("httpGet")
    url = f"http://127.0.0.1:{get['port']}{get['path']}"
    code = (f'import sys, urllib.request as u; '
            f'sys.exit(u.urlopen("{url}", timeout=4).read() != b"ok")')
    c["livenessProbe"]["exec"] = {"command": ["python", "-c", f"'{code}'"]}
yaml.safe_dump_all(docs, open(out, "w"), sort_keys=False)
EOF
if curl -s -m 2 -o /dev/null http://127.0.0.1:8501/; then
  echo "error: port 8501 is taken (the played pod publishes it)"; exit 2
fi
t0=$(date +%s.%N)
podman kube play "$PLAY/play.yaml" | tee "$PLAY/play.out"
# its output: "Pod:" then the pod's id, "Container:" then the container's id
pod=$(awk 'p=="Pod:" {print; exit} {p=$0}' "$PLAY/play.out")
ctr=$(awk 'p=="Container:" {print; exit} {p=$0}' "$PLAY/play.out")
[ -n "$ctr" ] || { echo "error: no container in the play's output"; exit 1; }
echo "pod $(podman pod inspect -f '{{.Name}}' "$pod"), container $(podman inspect -f '{{.Name}}' "$ctr")"
infra=$(podman pod inspect -f '{{.InfraContainerID}}' "$pod")
ip=$(podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$infra")
# first Streamlit's answer on the pod's address (probing podman's health check before that
# would count failures towards the liveness probe's restart), then the health check itself
ok=""
for _ in $(seq $((WAIT_S * 5))); do
  [ "$(podman inspect -f '{{.State.Running}}' "$ctr")" = true ] || { echo "error: the container exited"; exit 1; }
  if curl -fsS -m 2 -o /dev/null "http://$ip:8501/_stcore/health"; then ok=1; break; fi
  sleep 0.2
done
[ -n "$ok" ] || { echo "error: no answer from http://$ip:8501 in $WAIT_S s"; exit 1; }
echo "answering after $(python3 -c "import time; print(f'{time.time() - $t0:.1f}')") s"
podman healthcheck run "$ctr" || { echo "error: the liveness check fails"; exit 1; }
body=$(curl -fsS -m 5 "http://$ip:8501/_stcore/health")
echo "GET http://$ip:8501/_stcore/health -> $body"
[ "$body" = ok ]
echo "health check: $(podman inspect -f '{{.State.Health.Status}}' "$ctr"):" \
  "$(podman inspect -f '{{join .Config.Healthcheck.Test " "}}' "$ctr")"
uid=$(podman exec "$ctr" id -u)
[ "$uid" != 0 ] || { echo "error: runs as root"; exit 1; }
# the user's own home would be writable on a writable root filesystem
if podman exec "$ctr" touch /home/app/probe 2>/dev/null; then echo "error: root filesystem writable"; exit 1; fi
podman exec "$ctr" touch /tmp/probe || { echo "error: /tmp (emptyDir) not writable"; exit 1; }
echo "user $uid, root filesystem read-only, /tmp writable"
for _ in $(seq 300); do
  [[ $(podman logs "$ctr" 2>&1) == *"warm-up done"* ]] && break
  sleep 0.2
done
echo "$(podman logs "$ctr" 2>&1 | grep -o 'warm-up done in .*' || echo 'no warm-up line')," \
  "after $(python3 -c "import time; print(f'{time.time() - $t0:.1f}')") s"
echo "mounts: $(podman inspect -f '{{range .Mounts}}{{.Destination}}({{if .RW}}rw{{else}}ro{{end}}) {{end}}' "$ctr")"
echo "cookie secret set: $(podman exec "$ctr" sh -c 'test -n "$STREAMLIT_SERVER_COOKIE_SECRET" && echo yes || echo no')"
echo "limits: $(podman inspect -f 'memory={{.HostConfig.Memory}} cpu_quota={{.HostConfig.CpuQuota}}/{{.HostConfig.CpuPeriod}}' "$ctr")"
podman kube down "$PLAY/play.yaml"
echo "kube play passed"
