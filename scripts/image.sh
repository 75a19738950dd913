#!/usr/bin/env bash
# `make image`: the OCI image palisade:<version> from Debian packages and this checkout only; no
# step pulls a base image or talks to a registry.
#
#   1. the release binaries `palisade` and `palisade-agent`, stripped: `make build`'s, or with
#      IMAGE_BINARIES=test the ones `make test` built (CI); cargo rebuilds nothing when they are
#      current;
#   2. a Debian 12 root filesystem made by mmdebstrap (variant extract: no shell, no dpkg, no apt)
#      holding only the packages of the shared libraries `ldd` shows for the two binaries, plus
#      ca-certificates for https Git sources;
#   3. assembled by buildah (vfs storage, chroot isolation, a private storage root under
#      target/image) and exported as the OCI archive target/image/palisade-<version>.tar with
#      ref name palisade:<version>, which `kind load image-archive`, `ctr import` and
#      `podman load` accept;
#   4. checked: the archive is imported back and `palisade --version` and `palisade-agent --help`
#      run inside it (`buildah run --isolation chroot`), its ref name is the image every container
#      in manifests/ names, and its size is printed as `name: value unit` lines.
#
# Root (mmdebstrap writes a root filesystem, buildah a container store). `make image-deps`
# installs mmdebstrap, buildah and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "image: needs root (mmdebstrap, buildah)" >&2; exit 1; }
for tool in mmdebstrap buildah jq strip dpkg; do
    command -v "$tool" >/dev/null || { echo "image: $tool is missing (make image-deps)" >&2; exit 1; }
done

start=$(date +%s)
CARGO=${CARGO:-cargo}
target=${CARGO_TARGET_DIR:-target}
version=$($CARGO metadata --no-deps --format-version 1 | jq -r '.packages[] | select(.name == "palisade") | .version')
[ -n "$version" ] || { echo "image: no version for the palisade crate" >&2; exit 1; }
ref="palisade:$version"
out=target/image
archive="$out/palisade-$version.tar"
work="$out/work"
rootfs="$work/rootfs"
store=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
# A fixed time for file mtimes and the image's creation date: the commit's, so that the same
# commit and the same Debian packages give the same image.
# Not exported: cc-based build scripts rerun when SOURCE_DATE_EPOCH changes, and cargo would then
# rebuild half the tree.
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)

step() { echo "image: $*" >&2; }

cleanup() {
    # Containers first: vfs layers are plain directories, but buildah keeps state about them.
    buildah "${store[@]}" rm --all >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
cleanup
mkdir -p "$work" "$rootfs"

# 1. The release binaries. By default `make build`'s (cargo build --release --workspace: a no-op
#    when they are current). IMAGE_BINARIES=test takes the ones `make test` left in the same place
#    (cargo test --release --workspace --no-run: a no-op right after it), which is what CI does:
#    the tests' dev-dependencies add features to shared crates (tokio's test-util, kube's cel), so
#    cargo builds those crates, and everything above them, once per feature set, and a release
#    build after `make test` would recompile most of the tree.
case ${IMAGE_BINARIES:-release} in
    release) build=(build --release --workspace) ;;
    test) build=(test --release --workspace --no-run) ;;
    *) echo "image: IMAGE_BINARIES is release or test, not $IMAGE_BINARIES" >&2; exit 1 ;;
esac
step "release binaries: cargo ${build[*]}"
$CARGO "${build[@]}"
bins=("$target/release/palisade" "$target/release/palisade-agent")

# 2. The packages of the libraries the binaries link, found by asking dpkg which package owns each
#    library ldd resolves (this machine is Debian 12 too, so the names are the image's).
packages=(ca-certificates base-files)
while read -r lib; do
    owner=$(dpkg-query -S "$lib" 2>/dev/null || dpkg-query -S "/usr$lib" 2>/dev/null) ||
        { echo "image: no Debian package owns $lib (ldd of ${bins[*]})" >&2; exit 1; }
    packages+=("${owner%%:*}")
done < <(ldd "${bins[@]}" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
step "root filesystem: Debian 12 packages ${packages[*]} and their dependencies"

mirror=http://deb.debian.org/debian
# shellcheck disable=SC2016 # the hook's $1 is mmdebstrap's, expanded by its shell
SOURCE_DATE_EPOCH=$epoch mmdebstrap --quiet --variant=extract --include="$(IFS=,; echo "${packages[*]}")" \
    --extract-hook='
        # A dpkg status database for scanners (trivy, grype): what was extracted, at which version.
        for deb in "$1"/var/cache/apt/archives/*.deb; do
            echo "Package: $(dpkg-deb --field "$deb" Package)"
            echo "Status: install ok installed"
            dpkg-deb --field "$deb" Priority Section Installed-Size Maintainer Architecture Multi-Arch Source Version Depends Pre-Depends Description
            echo
        done > "$1/var/lib/dpkg/status"' \
    bookworm "$rootfs" \
    "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"

# Nothing here runs a maintainer script, so do what the ones that matter would have done.
#  - ca-certificates: the bundle update-ca-certificates writes (every certificate it ships is
#    enabled by default), where OpenSSL (libgit2's https) and openssl-probe look for it.
mkdir -p "$rootfs/etc/ssl/certs"
# (`awk 1`: each file as it is, with its last line ended.)
find "$rootfs/usr/share/ca-certificates" -name '*.crt' -print0 | LC_ALL=C sort -z | xargs -0 awk 1 \
    > "$rootfs/etc/ssl/certs/ca-certificates.crt"
certs=$(grep -c 'BEGIN CERTIFICATE' "$rootfs/etc/ssl/certs/ca-certificates.crt")
((certs > 100)) || { echo "image: only $certs CA certificates in the bundle" >&2; exit 1; }
mkdir -p "$rootfs/usr/lib/ssl"
[ -e "$rootfs/usr/lib/ssl/cert.pem" ] || ln -s /etc/ssl/certs/ca-certificates.crt "$rootfs/usr/lib/ssl/cert.pem"
#  - base-passwd: root, and nonroot (65532) that the controller's Deployment runs as.
printf '%s\n' 'root:x:0:0:root:/root:/usr/sbin/nologin' 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin' \
    > "$rootfs/etc/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' > "$rootfs/etc/group"
mkdir -p "$rootfs/root" "$rootfs/home/nonroot" "$rootfs/tmp" "$rootfs/proc" "$rootfs/sys"
chown 65532:65532 "$rootfs/home/nonroot"
chmod 1777 "$rootfs/tmp"
chmod 700 "$rootfs/root"
# What nothing here reads: documentation, manuals, locales, lintian overrides, debconf's Perl
# modules (there is no Perl), glibc's iconv modules (Rust never calls iconv), apt's cache and the
# host-specific files mmdebstrap leaves (the runtime provides hostname and resolv.conf).
rm -rf "$rootfs"/usr/share/{doc,man,info,locale,lintian,bash-completion,pixmaps,perl5} \
    "$rootfs"/usr/lib/x86_64-linux-gnu/gconv "$rootfs"/var/cache/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/log/* "$rootfs"/etc/{hostname,resolv.conf}

# The binaries, stripped.
mkdir -p "$rootfs/usr/local/bin"
for bin in "${bins[@]}"; do
    strip --strip-all -o "$rootfs/usr/local/bin/${bin##*/}" "$bin"
done

# 3. The image.
step "assembling $ref with buildah"
ctr=$(buildah "${store[@]}" from --quiet scratch)
# Copied into the mounted container (`buildah add` would make every file root's).
cp -a "$rootfs/." "$(buildah "${store[@]}" mount "$ctr")/"
buildah "${store[@]}" umount "$ctr" >/dev/null
buildah "${store[@]}" config \
    --os linux --arch amd64 \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --entrypoint '["/usr/local/bin/palisade"]' --cmd '["--help"]' --workingdir / \
    --created-by "scripts/image.sh (mmdebstrap: ${packages[*]}; palisade, palisade-agent)" \
    --label org.opencontainers.image.title=palisade \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.description="Palisade: GitOps rollout of network policy (palisade, palisade-agent)" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label org.opencontainers.image.revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    "$ctr"
buildah "${store[@]}" commit --quiet --format oci --timestamp "$epoch" --rm "$ctr" "localhost/$ref" >/dev/null
rm -f "$archive"
buildah "${store[@]}" push --quiet "localhost/$ref" "oci:$work/layout:$ref"
# containerd (kind load, ctr import) names an OCI image by io.containerd.image.name and
# would otherwise keep the bare ref name, which is not the name a Pod's `image: palisade:<version>`
# resolves to (docker.io/library/palisade:<version>). podman and buildah read the ref name.
jq --arg name "docker.io/library/$ref" \
    '.manifests[0].annotations["io.containerd.image.name"] = $name' \
    "$work/layout/index.json" > "$work/index.json"
mv "$work/index.json" "$work/layout/index.json"
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner -C "$work/layout" -cf "$archive" \
    oci-layout index.json blobs

# 4. The checks: the archive, not the store it came from.
step "checking $archive"
index=$(tar -xOf "$archive" index.json)
got=$(jq -r '.manifests[0].annotations["org.opencontainers.image.ref.name"]' <<<"$index")
[ "$got" = "$ref" ] || { echo "image: ref name is $got, not $ref" >&2; exit 1; }
mapfile -t named < <(sed -n 's/^ *image: *//p' manifests/*.yaml | sort -u)
[ "${named[*]}" = "$ref" ] || { echo "image: manifests/ name ${named[*]}, not $ref" >&2; exit 1; }
run=$(buildah "${store[@]}" from --quiet "oci-archive:$archive")
got=$(buildah "${store[@]}" run --isolation chroot "$run" -- palisade --version)
[ "$got" = "palisade $version" ] || { echo "image: palisade --version printed '$got'" >&2; exit 1; }
got=$(buildah "${store[@]}" run --isolation chroot "$run" -- palisade-agent --help)
grep -q '^Usage: palisade-agent' <<<"$got" || { echo "image: palisade-agent --help printed no usage: $got" >&2; exit 1; }
buildah "${store[@]}" run --isolation chroot --user 65532 "$run" -- palisade --version >/dev/null ||
    { echo "image: palisade does not run as nonroot (65532)" >&2; exit 1; }
echo "image: $archive ($ref): palisade --version and palisade-agent --help ran inside it" >&2

# Sizes: what a registry or `kind load` moves (the gzip-compressed layer blobs in the archive),
# and the root filesystem unpacked.
manifest=$(jq -r '.manifests[0].digest' <<<"$index")
manifest_json=$(tar -xOf "$archive" "blobs/${manifest/://}")
compressed=$(jq '[.layers[].size] | add' <<<"$manifest_json")
uncompressed=$(du -sb "$rootfs" | cut -f1)
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1000000 }'; }
echo "image-size-compressed: $(mb "$compressed") MB"
echo "image-size-uncompressed: $(mb "$uncompressed") MB"
echo "image-archive-size: $(mb "$(stat -c %s "$archive")") MB"
echo "image-build-time: $(($(date +%s) - start)) s"
