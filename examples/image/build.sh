#!/usr/bin/env bash
# Builds the example image function from the Dockerfile beside this script with
# buildah and writes it as an OCI image layout, for `launch.image = "oci:OUT_DIR:TAG"`:
#
#   examples/image/build.sh OUT_DIR [TAG]        (as root; TAG defaults to "latest")
#
# The image is `FROM scratch`, so the build context is gathered here: the example
# function binary (built with `cargo build --release --example function`, or the file
# FUNCTION_BINARY names) at rootfs/function, and each shared library `ldd` lists for it
# at its own path under rootfs/. buildah keeps its storage (vfs driver, which needs no
# kernel overlay support) and its temporary files in a directory removed at the end,
# so the build leaves nothing behind but OUT_DIR.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:?usage: build.sh OUT_DIR [TAG]}
tag=${2:-latest}

binary=${FUNCTION_BINARY:-}
if [[ -z $binary ]]; then
  (cd "$here/../.." && cargo build --release --example function)
  binary=${CARGO_TARGET_DIR:-$here/../../target}/release/examples/function
fi
[[ -x $binary ]] || { echo "build.sh: $binary is not an executable" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
context=$work/context
mkdir -p "$context/rootfs" "$work/tmp"
install -m 0755 "$binary" "$context/rootfs/function"
# `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and the loader as
# `/lib64/ld-linux-x86-64.so.2 (0x...)`; a static binary has none.
libs=$(ldd "$binary" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' || true)
for lib in $libs; do
  mkdir -p "$context/rootfs$(dirname "$lib")"
  cp -L "$lib" "$context/rootfs$lib"
done
cp "$here/Dockerfile" "$context/Dockerfile"

mkdir -p "$(dirname "$out")"
storage=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
export TMPDIR=$work/tmp
buildah "${storage[@]}" bud --quiet --tag scf-example-function "$context" >/dev/null
buildah "${storage[@]}" push --quiet scf-example-function "oci:$out:$tag"
buildah "${storage[@]}" rmi --all >/dev/null
echo "build.sh: wrote oci:$out:$tag"
