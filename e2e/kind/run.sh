#!/usr/bin/env bash
# Palisade end to end on a real cluster: a kind cluster (kindnet), the image `make image` built,
# `kubectl apply -k manifests/`, and the quickstart story of `make demo` (examples/quickstart)
# against the real API server, each phase asserted from the PolicyRollout's status. For a machine
# with Docker, kind, kubectl and git: see README.md here for what it needs and why it does not run
# on the development machines.
#
#   sudo make image        # target/image/palisade-<version>.tar and target/release/palisade
#   e2e/kind/run.sh        # CLUSTER=palisade-e2e, KEEP=1 keeps the cluster, PALISADE=path/to/palisade
set -euo pipefail
cd "$(dirname "$0")/../.."

cluster=${CLUSTER:-palisade-e2e}
context=kind-$cluster
version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)
image=palisade:$version
archive=${ARCHIVE:-target/image/palisade-$version.tar}
palisade=${PALISADE:-${CARGO_TARGET_DIR:-target}/release/palisade}
git_port=${GIT_PORT:-19418}
git_url=git://git.palisade-e2e.svc.cluster.local/shop.git
example=examples/quickstart
work=$(mktemp -d)
repo=$work/repo

die() { echo "e2e/kind: $*" >&2; exit 1; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '$ %s\n' "$*"; }
k() { kubectl --context "$context" "$@"; }
p() { say "palisade $*"; "$palisade" "$@" --context "$context"; }
git_() { git -C "$repo" -c user.name=E2E -c user.email=e2e@example.com -c commit.gpgsign=false "$@"; }
push() { git_ push -q origin main && git_ rev-parse HEAD; }

# Waits until the rollout's status satisfies a check (`wait_for WHAT CHECK ARGS...`) reading
# $phase, $enforced and $candidate (commits), $enforced_id (the enforced revision's content id)
# and $outcomes (every history outcome); prints the status and the controller's log on timeout.
status() {
    k -n shop get policyrollout shop -o jsonpath='{.status.phase}{" "}{.status.enforcedRevision.commit}{" "}{.status.candidateRevision.commit}{" "}{.status.enforcedRevision.id}{" "}{.status.history[*].outcome}' \
        2>/dev/null || true
}
wait_for() {
    local what=$1 deadline=$((SECONDS + ${TIMEOUT:-180}))
    shift
    printf '(waiting for %s)\n' "$what"
    while :; do
        read -r phase enforced candidate enforced_id outcomes <<<"$(status)" || true
        if "$@"; then return 0; fi
        if ((SECONDS >= deadline)); then
            echo "e2e/kind: timed out waiting for $what; status: $(status)" >&2
            k -n shop get policyrollout shop -o yaml >&2 || true
            k -n palisade-system logs deployment/palisade-controller --tail=40 >&2 || true
            exit 1
        fi
        sleep 1
    done
}
# Commit ids in the status may be abbreviated.
same() { [ -n "$1" ] && [ -n "$2" ] && { [[ $1 == "$2"* ]] || [[ $2 == "$1"* ]]; }; }
enforcing() { [ "$phase" = Enforced ] && same "$enforced" "$1"; }
blocked() { [ "$phase" = Blocked ] && same "$candidate" "$1" && same "$enforced" "$2"; }
fast_tracked_to() { [ "$phase" = Enforced ] && [ "$enforced_id" = "$1" ] && [[ " $outcomes " == *" FastTracked "* ]]; }
connects() { k -n shop exec "deploy/$1" -- wget -q -T 3 -O /dev/null "http://$2/"; }
expect_connects() {
    say "kubectl exec deploy/$1 -- wget http://$2/"
    connects "$1" "$2" || die "$1 could not reach $2"
    echo "connected"
}
expect_refused() {
    say "kubectl exec deploy/$1 -- wget http://$2/"
    ! connects "$1" "$2" 2>/dev/null || die "$1 reached $2, which the enforced policy denies"
    echo "refused"
}
show() {
    say "kubectl get policyrollouts -n shop"
    k get policyrollouts -n shop
    p get rollouts -n shop
}

cleanup() {
    [ -n "${forward:-}" ] && kill "$forward" 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then
        echo "e2e/kind: kept cluster $cluster (kind delete cluster --name $cluster)" >&2
    elif [ -n "${created:-}" ]; then
        kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

for tool in docker kind kubectl git; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
[ -n "$version" ] || die "no [workspace.package] version in Cargo.toml"
[ -f "$archive" ] || die "$archive is missing: build it with 'sudo make image'"
[ -x "$palisade" ] || die "$palisade is missing: 'make image' builds it (or set PALISADE)"
kernel=$(docker info --format '{{.KernelVersion}}')
if [ "$(printf '%s\n' 6.6 "${kernel%%-*}" | sort -V | head -1)" != 6.6 ]; then
    echo "e2e/kind: warning: the nodes run Linux $kernel; the agent attaches with TCX, which needs 6.6" >&2
fi
kind get clusters 2>/dev/null | grep -qx "$cluster" && die "cluster $cluster exists (kind delete cluster --name $cluster)"

step "0. A kind cluster with kindnet, the image from its archive, the manifests"
say "kind create cluster --name $cluster --config e2e/kind/cluster.yaml"
created=1
kind create cluster --name "$cluster" --config e2e/kind/cluster.yaml --wait 180s
# The agent pins its programs and maps in the node's bpffs.
for node in $(kind get nodes --name "$cluster"); do
    docker exec "$node" sh -c 'grep -q " /sys/fs/bpf bpf " /proc/mounts || mount -t bpf bpf /sys/fs/bpf'
done
say "kind load image-archive $archive --name $cluster"
kind load image-archive "$archive" --name "$cluster"
for node in $(kind get nodes --name "$cluster"); do
    docker exec "$node" crictl inspecti "docker.io/library/$image" >/dev/null ||
        die "$node has no docker.io/library/$image after kind load (the name Pods' image: $image resolves to)"
done
say "kubectl apply -k manifests/"
k apply -k manifests/
k -n palisade-system rollout status daemonset/palisade-agent --timeout=180s
k -n palisade-system rollout status deployment/palisade-controller --timeout=180s
k -n palisade-system get pods -o wide

step "1. The shop, its Git repository, and the first commit synced and enforced"
k apply -f e2e/kind/git-server.yaml -f e2e/kind/shop.yaml
k -n palisade-e2e rollout status deployment/git --timeout=180s
for workload in deployment/frontend deployment/api statefulset/postgres; do
    k -n shop rollout status "$workload" --timeout=180s
done
k -n palisade-e2e port-forward service/git "$git_port:9418" >"$work/port-forward.log" 2>&1 &
forward=$!
for _ in $(seq 30); do
    git ls-remote "git://127.0.0.1:$git_port/shop.git" >/dev/null 2>&1 && break
    sleep 1
done
git init -q -b main "$repo"
git_ remote add origin "git://127.0.0.1:$git_port/shop.git"
cp "$example"/policies/*.yaml "$repo"/
git_ add -A && git_ commit -q -m "shop: initial policies"
first=$(push)
say "kubectl apply -f $example/rollout.yaml (source: $git_url)"
sed "s|url: .*|url: $git_url|" "$example/rollout.yaml" | k apply -f -
wait_for "the first commit to be enforced" enforcing "$first"
first_id=$enforced_id
show
expect_connects api postgres:5432
expect_refused frontend postgres:5432

step "2. A commit that would cut the API off its database: audited on live traffic, blocked"
cp "$example/changes/2-breaks-the-database.yaml" "$repo/postgres.yaml"
git_ commit -q -am "postgres: only schema migrations may connect"
breaking=$(push)
wait_for "the audit to block it" blocked "$breaking" "$first"
show
p describe rollout shop -n shop | tee "$work/describe.txt"
# A row of "Newly denied flows": Ingress shop/postgres, the peer the API (by workload or labels).
grep '5432/TCP' "$work/describe.txt" | grep -Eq 'shop/postgres.*(shop/api|app=api)' ||
    die "describe names no newly denied flow from the API to shop/postgres 5432/TCP"
echo "(the first commit is still enforced: the API keeps its database)"
expect_connects api postgres:5432

step "3. The fix supersedes it, passes the audit and is promoted"
cp "$example/changes/3-fix.yaml" "$repo/postgres.yaml"
git_ commit -q -am "postgres: the API and migrations; never the frontend"
fix=$(push)
wait_for "the fix to be promoted" enforcing "$fix"
show
expect_connects api postgres:5432
expect_refused frontend postgres:5432

step "4. Rollback is git revert: the first content again, fast-tracked without a new audit"
git_ revert --no-edit HEAD HEAD~1 >/dev/null
started=$SECONDS
push >/dev/null
# Content-addressed: the revert's content is the first commit's, so it is that revision again.
wait_for "the revert to be fast-tracked" fast_tracked_to "$first_id"
show
echo "(restored in about $((SECONDS - started))s)"
expect_connects api postgres:5432
expect_refused frontend postgres:5432

step "Done: the quickstart story on kind, every phase asserted"
