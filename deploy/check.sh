#!/usr/bin/env bash
# Validates the deploy assets under deploy/ without a cluster, a systemd host or a
# container registry:
#
#   deploy/check.sh [--image]
#
# - systemd: `systemd-analyze verify` of the unit (alone and with the root drop-in), on a
#   copy whose commands point at the gateway built here (verify insists that they
#   exist), with any complaint a failure; `systemd-analyze security --offline` holds the
#   unit's exposure at or below SECURITY_THRESHOLD (tenths: 20 is "2.0");
# - Kubernetes: yamllint, then every manifest against the Kubernetes JSON schemas
#   shipped in the `kubernetes-validate` package (no download), strictly (unknown
#   fields fail), for the oldest and newest versions in K8S_VERSIONS; each
#   kustomization.yaml lists exactly the manifests beside it;
# - configs: every gateway TOML embedded in a ConfigMap, and deploy/gateway.toml, passes
#   `scf-gateway check`, with each ${VAR} it references set to a dummy value;
# - Dockerfile: hadolint, where it is installed;
# - with --image (or CI=true, as root, with debootstrap and buildah): the image is built
#   from deploy/Dockerfile (deploy/build-image.sh, bounded by IMAGE_TIMEOUT seconds), its
#   config is checked (user, entrypoint, command, ports), and the gateway in it runs:
#   --version, `check` of its bundled config, and `run` answering /healthz and /readyz.
#   IMAGE_ARCHIVE=FILE checks an image built before (an OCI archive) instead.
#
# The gateway binary: $SCF_GATEWAY, else `cargo build --bin scf-gateway` (debug).
# Exits non-zero if any check failed; every check runs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

read -r -a K8S_VERSIONS <<<"${K8S_VERSIONS:-1.28 1.37}"
SECURITY_THRESHOLD=${SECURITY_THRESHOLD:-20}
IMAGE_TIMEOUT=${IMAGE_TIMEOUT:-900}

image=0
if [[ ${1:-} == --image ]]; then
  image=1
elif [[ ${CI:-} == true ]]; then
  image=auto
fi

failed=()
check() {
  local name=$1
  shift
  echo "--> deploy: $name"
  if "$@"; then
    echo "--> deploy: $name: ok"
  else
    echo "--> deploy: $name: FAILED"
    failed+=("$name")
  fi
}
skip() { echo "--> deploy: $1: SKIPPED: $2"; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ -n ${SCF_GATEWAY:-} ]]; then
  gateway=$SCF_GATEWAY
else
  cargo build --quiet --bin scf-gateway
  gateway=${CARGO_TARGET_DIR:-$root/target}/debug/scf-gateway
fi
gateway=$(realpath "$gateway")

# systemd-analyze prints problems and may still exit 0 (an unknown key is "ignored"):
# any output is a failure.
verify_quiet() {
  local out
  out=$(systemd-analyze verify "$@" 2>&1) || { printf '%s\n' "$out"; return 1; }
  [[ -z $out ]] || { printf '%s\n' "$out"; return 1; }
}

systemd_unit() {
  local dir=$work/systemd
  mkdir -p "$dir"
  sed "s#/usr/local/bin/scf-gateway#$gateway#g" deploy/systemd/scf-gateway.service \
    >"$dir/scf-gateway.service"
  verify_quiet "$dir/scf-gateway.service" || return 1
  systemd-analyze security --offline=yes --threshold="$SECURITY_THRESHOLD" \
    "$dir/scf-gateway.service" | tail -n 1 || return 1
  # Drop-ins in the unit's directory are applied by verify.
  mkdir -p "$dir/scf-gateway.service.d"
  cp deploy/systemd/root.conf "$dir/scf-gateway.service.d/"
  verify_quiet "$dir/scf-gateway.service"
}

manifests() {
  find deploy/kubernetes -name '*.yaml' ! -name kustomization.yaml | sort
}

yaml_lint() {
  yamllint --strict -d '{extends: default, rules: {line-length: {max: 100}, document-start: disable}}' \
    deploy/kubernetes
}

k8s_schemas() {
  local version status=0
  mapfile -t files < <(manifests)
  for version in "${K8S_VERSIONS[@]}"; do
    kubernetes-validate --strict --quiet -k "$version" "${files[@]}" || status=1
  done
  ((status == 0)) && echo "${#files[@]} manifests valid for Kubernetes ${K8S_VERSIONS[*]}"
  return "$status"
}

kustomizations() {
  python3 - deploy/kubernetes <<'EOF'
import pathlib, sys, yaml
bad = 0
for k in sorted(pathlib.Path(sys.argv[1]).rglob("kustomization.yaml")):
    listed = set(yaml.safe_load(k.read_text()).get("resources") or [])
    present = {p.name for p in k.parent.glob("*.yaml") if p.name != k.name}
    for name in sorted(listed - present):
        print(f"{k}: lists {name}, which does not exist"); bad = 1
    for name in sorted(present - listed):
        print(f"{k}: does not list {name}"); bad = 1
sys.exit(bad)
EOF
}

# Writes each gateway TOML (ConfigMap data keys ending in .toml) to $work/configs/.
extract_configs() {
  mkdir -p "$work/configs"
  python3 - deploy/kubernetes "$work/configs" <<'EOF'
import pathlib, sys, yaml
out = pathlib.Path(sys.argv[2])
for f in sorted(pathlib.Path(sys.argv[1]).rglob("*.yaml")):
    for doc in yaml.safe_load_all(f.read_text()):
        if not doc or doc.get("kind") != "ConfigMap":
            continue
        for key, text in (doc.get("data") or {}).items():
            if key.endswith(".toml"):
                name = f"{f.parent.name}-{doc['metadata']['name']}-{key}"
                (out / name).write_text(text)
                print(f"{f} -> {name}")
EOF
  cp deploy/gateway.toml "$work/configs/container-gateway.toml"
}

check_config() {
  local file=$1 vars=() name
  # shellcheck disable=SC2016 # a literal ${NAME}
  for name in $(grep -o '\${[A-Za-z_][A-Za-z0-9_]*}' "$file" | sort -u | tr -d '${}'); do
    vars+=("$name=check-dummy-value")
  done
  env "${vars[@]}" "$gateway" check --config "$file"
}

configs() {
  local file status=0
  extract_configs || return 1
  for file in "$work"/configs/*.toml; do
    echo "scf-gateway check --config $(basename "$file")"
    check_config "$file" || status=1
  done
  return "$status"
}

dockerfile_lint() {
  hadolint deploy/Dockerfile
}

# The image's config as the OCI image config states it.
image_config() {
  local archive=$1
  skopeo inspect --config "oci-archive:$archive" >"$work/image-config.json" || return 1
  python3 - "$work/image-config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))["config"]
want = {
    "User": "10001:10001",
    "Entrypoint": ["scf-gateway"],
    "Cmd": ["run", "--config", "/etc/scf-gateway/gateway.toml"],
    "ExposedPorts": {"8080/tcp": {}, "9090/tcp": {}},
    "StopSignal": "SIGTERM",
}
bad = 0
for key, value in want.items():
    got = c.get(key)
    print(f"{key}: {json.dumps(got)}")
    if got != value:
        print(f"  expected {json.dumps(value)}"); bad = 1
sys.exit(bad)
EOF
}

# The gateway inside the image, run by buildah (chroot isolation, the host's network).
image_run() {
  local archive=$1 storage ctr port admin fport fpid pid status=0 _
  storage=(--root "$work/run-storage" --runroot "$work/run-run" --storage-driver vfs)
  ctr=$(buildah "${storage[@]}" from --quiet "oci-archive:$archive") || return 1
  run() { buildah "${storage[@]}" run --isolation chroot --network host "$@"; }
  echo "uid in the image: $(run "$ctr" -- id -u)"
  [[ $(run "$ctr" -- id -u) == 10001 ]] || status=1
  run "$ctr" -- scf-gateway --version || status=1
  run "$ctr" -- scf-gateway check --config /etc/scf-gateway/gateway.toml || status=1
  # A run of the bundled config on free loopback ports, in front of the example
  # function (python3 on the host, as the function container would be): /healthz and
  # /readyz answer, an invocation reaches the function, SIGTERM ends the gateway.
  read -r port admin fport < <(python3 -c 'import socket
s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
  PORT=$fport python3 examples/functions/hello/app.py >"$work/function.log" 2>&1 &
  fpid=$!
  for _ in $(seq 1 50); do
    curl -s -o /dev/null "http://127.0.0.1:$fport/" && break
    sleep 0.2
  done
  mkdir -p "$work/image-run"
  sed -e "s/^listen = .*/listen = \"127.0.0.1:$port\"/" \
    -e "s/^admin_listen = .*/admin_listen = \"127.0.0.1:$admin\"/" \
    -e "s/^instances = .*/instances = [\"127.0.0.1:$fport\"]/" \
    deploy/gateway.toml >"$work/image-run/gateway.toml"
  chmod -R a+rX "$work/image-run"
  setsid buildah "${storage[@]}" run --isolation chroot --network host \
    -v "$work/image-run:/cfg:ro" "$ctr" -- scf-gateway run --config /cfg/gateway.toml \
    >"$work/image-run.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 50); do
    curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS -o /dev/null -w 'GET /healthz: %{http_code}\n' "http://127.0.0.1:$admin/healthz" || status=1
  curl -fsS -o /dev/null -w 'GET /readyz: %{http_code}\n' "http://127.0.0.1:$admin/readyz" || status=1
  curl -fsS -o /dev/null -w 'POST /v1/functions/function/invocations: %{http_code}\n' \
    -H 'Content-Type: application/json' \
    -d '{"name":"image"}' "http://127.0.0.1:$port/v1/functions/function/invocations" || status=1
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "the gateway did not stop on SIGTERM"
    kill -KILL -- "-$pid" 2>/dev/null || true
    status=1
  fi
  wait "$pid" 2>/dev/null || true
  kill "$fpid" 2>/dev/null || true
  wait "$fpid" 2>/dev/null || true
  ((status == 0)) || cat "$work/image-run.log"
  buildah "${storage[@]}" rm "$ctr" >/dev/null 2>&1 || true
  buildah "${storage[@]}" rmi --all >/dev/null 2>&1 || true
  return "$status"
}

image_build() {
  local archive=$work/scf-gateway.oci.tar start=$SECONDS
  if [[ -n ${IMAGE_ARCHIVE:-} ]]; then
    echo "checking the image in $IMAGE_ARCHIVE (not rebuilt)"
    image_config "$IMAGE_ARCHIVE" || return 1
    image_run "$IMAGE_ARCHIVE"
    return
  fi
  timeout --kill-after=30 "$IMAGE_TIMEOUT" "$here/build-image.sh" "$archive" || {
    echo "the image build failed or took longer than ${IMAGE_TIMEOUT}s"
    return 1
  }
  echo "image built in $((SECONDS - start)) s"
  image_config "$archive" || return 1
  image_run "$archive"
}

have() { command -v "$1" >/dev/null 2>&1; }

if have systemd-analyze; then check systemd-unit systemd_unit; else skip systemd-unit "no systemd-analyze"; fi
if have yamllint; then check yamllint yaml_lint; else skip yamllint "yamllint is not installed"; fi
if have kubernetes-validate; then
  check kubernetes-schemas k8s_schemas
else
  skip kubernetes-schemas "kubernetes-validate is not installed"
  failed+=(kubernetes-schemas)
fi
check kustomizations kustomizations
check configs configs
if have hadolint; then check dockerfile dockerfile_lint; else skip dockerfile "hadolint is not installed"; fi

if [[ $image == 0 ]]; then
  skip image "not asked for (--image, or CI=true)"
elif [[ $(id -u) -ne 0 ]] || ! have debootstrap || ! have buildah || ! have skopeo; then
  skip image "needs root, debootstrap, buildah and skopeo"
  [[ $image == 1 ]] && failed+=(image)
else
  check image image_build
fi

if ((${#failed[@]} > 0)); then
  echo "--> deploy: failed: ${failed[*]}"
  exit 1
fi
echo "--> deploy: all checks passed"
