#!/usr/bin/env bash
# Installs everything Palisade needs on a fresh Debian 12 machine. Idempotent: a second run
# only checks. The eBPF program is built by Debian's rustc-web (its LLVM and prebuilt bpfel core)
# and linked by bpf-linker built against that same libLLVM (see shared/notes/ebpf-toolchain.md).
set -euo pipefail

APT_PACKAGES=(rustc-web libstd-rust-web-dev-bpf iproute2 nftables git gnupg openssh-client libssl-dev pkg-config)
BPF_LINKER_VERSION=0.13.0
# `deps.sh image` (make image-deps): only what `make image` adds, the root filesystem's and the
# image's builders and the archive's JSON reader.
if [ "${1:-}" = image ]; then
    APT_PACKAGES=(mmdebstrap buildah jq binutils)
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
        echo "deps: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ "${1:-}" = image ]; then
    echo "deps: image tools ok ($(mmdebstrap --version), $(buildah --version))"
    exit 0
fi

llvm_major=$(/usr/bin/rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    echo "deps: building bpf-linker $BPF_LINKER_VERSION against Debian's libLLVM $llvm_major"
    # bpf-linker only needs $LLVM_PREFIX/lib/libLLVM.so; point it at the library rustc-web uses.
    prefix=$(mktemp -d)
    mkdir -p "$prefix/lib"
    ln -s "/usr/lib/x86_64-linux-gnu/libLLVM.so.$llvm_major.1" "$prefix/lib/libLLVM.so"
    LLVM_PREFIX="$prefix" cargo install --quiet "bpf-linker@$BPF_LINKER_VERSION" --locked \
        --no-default-features --features "llvm-$llvm_major"
    rm -rf "$prefix"
fi

if ! mountpoint -q /sys/fs/bpf 2>/dev/null && [ "$(id -u)" = 0 ]; then
    mount -t bpf bpf /sys/fs/bpf
fi
echo "deps: ok (rustc-web LLVM $llvm_major, $(bpf-linker --version))"
