#!/usr/bin/env bash
# Builds the container image from deploy/Dockerfile with buildah where no container
# registry is reachable: both base images are made here instead of pulled, and passed
# to the Dockerfile as its RUST_IMAGE and RUNTIME_IMAGE build arguments.
#
#   deploy/build-image.sh OUT            (as root; OUT: where the image goes)
#
# - the runtime base: Debian bookworm, `debootstrap --variant=minbase` (what
#   debian:bookworm-slim holds, from the Debian mirror);
# - the builder base: the same plus gcc, make and libc6-dev, and the host's Rust
#   toolchain copied under /usr/local (the MSRV toolchain when rustup has it, else the
#   default one).
# The image is written as an OCI archive to OUT (`skopeo copy oci-archive:OUT
# docker-daemon:scf-gateway:latest`, or `podman load -i OUT`). buildah's storage (vfs:
# no kernel overlay support needed) lives in a work directory removed at the end,
# except with KEEP_WORK=1 (then its path is printed). Environment: DEBIAN_MIRROR
# (default http://deb.debian.org/debian), RUST_TOOLCHAIN (a rustup toolchain name).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
out=${1:?usage: build-image.sh OUT}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm

log() { printf 'build-image: %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { log "needs root (debootstrap, buildah)"; exit 1; }
for tool in debootstrap buildah; do
  command -v "$tool" >/dev/null || { log "$tool is not installed"; exit 1; }
done

# The toolchain the builder stage compiles with.
toolchain=${RUST_TOOLCHAIN:-$(sed -n 's/^rust-version = "\(.*\)"/\1/p' "$root/Cargo.toml")}
if ! sysroot=$(rustup run "$toolchain" rustc --print sysroot 2>/dev/null); then
  sysroot=$(rustc --print sysroot)
fi
log "Rust toolchain: $("$sysroot/bin/rustc" --version) ($sysroot)"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/scf-gateway-image.XXXXXX")
cleanup() {
  if [[ ${KEEP_WORK:-0} == 1 ]]; then
    log "work directory kept: $work"
  else
    buildah "${storage[@]}" rm --all >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
}
storage=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
trap cleanup EXIT
mkdir -p "$work/tmp"
export TMPDIR=$work/tmp

# Both root filesystems at once: each is mostly waiting for the mirror.
log "debootstrap $suite (runtime and builder) from $mirror"
debootstrap --variant=minbase "$suite" "$work/runtime" "$mirror" >"$work/runtime.log" 2>&1 &
runtime_pid=$!
debootstrap --variant=minbase --include=gcc,make,libc6-dev,ca-certificates \
  "$suite" "$work/builder" "$mirror" >"$work/builder.log" 2>&1 &
builder_pid=$!
status=0
wait "$runtime_pid" || { status=$?; tail -n 20 "$work/runtime.log" >&2; }
wait "$builder_pid" || { status=$?; tail -n 20 "$work/builder.log" >&2; }
((status == 0)) || { log "debootstrap failed"; exit 1; }

# What the official slim images drop too: package lists, docs, caches.
for rootfs in "$work/runtime" "$work/builder"; do
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
done
# The builder trusts what the host trusts: its CA bundle replaces Debian's, so cargo
# reaches crates.io through a TLS-inspecting proxy that the host's bundle knows.
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  cp /etc/ssl/certs/ca-certificates.crt "$work/builder/etc/ssl/certs/ca-certificates.crt"
fi
# rustc finds its standard library relative to its own binary, so /usr/local/bin/rustc
# with /usr/local/lib/rustlib is a complete toolchain.
cp -a "$sysroot/bin" "$sysroot/lib" "$sysroot/libexec" "$work/builder/usr/local/"

# A directory tree as a one-layer image in buildah's storage.
import() {
  local rootfs=$1 name=$2 ctr mnt
  ctr=$(buildah "${storage[@]}" from scratch)
  mnt=$(buildah "${storage[@]}" mount "$ctr")
  cp -a "$rootfs/." "$mnt/"
  buildah "${storage[@]}" umount "$ctr" >/dev/null
  buildah "${storage[@]}" config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$ctr"
  buildah "${storage[@]}" commit --quiet --rm "$ctr" "$name" >/dev/null
  rm -rf "$rootfs"
}
import "$work/runtime" localhost/scf-build/runtime:$suite
import "$work/builder" localhost/scf-build/rust:$suite

log "buildah bud -f deploy/Dockerfile"
start=$SECONDS
# Chroot isolation and the host's network: no nested namespaces or CNI needed, and cargo
# reaches crates.io as the host does.
buildah "${storage[@]}" bud --quiet --pull=never --isolation chroot --network host \
  --build-arg RUST_IMAGE=localhost/scf-build/rust:$suite \
  --build-arg RUNTIME_IMAGE=localhost/scf-build/runtime:$suite \
  -f "$here/Dockerfile" -t localhost/scf-gateway:latest "$root" >/dev/null
log "built in $((SECONDS - start)) s"

mkdir -p "$(dirname "$out")"
rm -f "$out"
buildah "${storage[@]}" push --quiet localhost/scf-gateway:latest "oci-archive:$out:scf-gateway:latest"
log "wrote oci-archive:$out ($(du -h "$out" | cut -f1))"
