#!/usr/bin/env bash
# `make demo`: the whole story on this machine, in local mode, on examples/quickstart.
#
# A shop (frontend -> api -> postgres) runs as network namespaces with real traffic between them.
# Palisade syncs its policies from a temporary Git repository, audits each new commit on that
# traffic while the current revision stays enforced, blocks a commit that would break the
# database, promotes the fix with an atomic flip, and restores the first revision from a
# `git revert` without a new audit. Needs root (network namespaces, eBPF).
set -euo pipefail
cd "$(dirname "$0")/.."
palisade=$(realpath "${CARGO_TARGET_DIR:-target}/release/palisade")
example=examples/quickstart
state=/run/palisade-demo
pins=/sys/fs/bpf/palisade-demo
work=/tmp/palisade-demo
repo=$work/repo
api=shop/api-5d8f7b6c4-m3n4b
frontend=shop/frontend-6b7c9d8f5-x2k9p
postgres=shop/postgres-0

if [ "$(id -u)" -ne 0 ]; then
    echo "make demo needs root: it creates network namespaces and loads eBPF programs" >&2
    exit 2
fi

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '$ %s\n' "$*"; }
p() { say "palisade $*"; "$palisade" "$@"; }
git_() { git -C "$repo" -c user.name="Demo" -c user.email=demo@example.com -c commit.gpgsign=false "$@"; }
# Exit 1 is an answer here (a connection that did not get through); above that is a failure.
probe() {
    say "palisade local probe --from $1 --to $2 --port $3"
    "$palisade" local probe --state "$state" --from "$1" --to "$2" --port "$3" --timeout 300ms || [ $? -eq 1 ]
}
table() { p get rollouts --local --state "$state"; }
# Waits until `get rollouts shop` (a table, or with `json` its JSON without blanks) matches an
# extended regex, showing the end of the log on timeout.
wait_for() {
    local what=$1 format=$2 pattern=$3 deadline=$((SECONDS + 60))
    printf '(waiting for %s)\n' "$what"
    until "$palisade" get rollouts shop --local --state "$state" -o "$format" 2>/dev/null | tr -d ' \n' | grep -Eq "$pattern"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out waiting for $what; last lines of the log:" >&2
            tail -20 "$work/run.log" >&2
            exit 1
        fi
        sleep 0.3
    done
}
cleanup() {
    [ -n "${run_pid:-}" ] && kill "$run_pid" 2>/dev/null && wait "$run_pid" 2>/dev/null
    "$palisade" local down --state "$state" --pin-dir "$pins" >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "0. A local cluster: one network namespace per pod, real traffic between them"
cleanup
rm -rf "$work" && mkdir -p "$repo"
p local up --cluster "$example/cluster.yaml" --state "$state" --prefix pdemo-

step "1. The policies live in Git; Palisade syncs them and enforces the first revision"
git_ init -q -b main
cp "$example"/policies/*.yaml "$repo"/
git_ add -A && git_ commit -q -m "shop: initial policies"
say "git log --oneline"; git_ log --oneline
sed "s|url: .*|url: file://$repo|" "$example/rollout.yaml" >"$work/rollout.yaml"
say "palisade local run --rollout rollout.yaml &   (log: $work/run.log)"
"$palisade" local run --state "$state" --pin-dir "$pins" --rollout "$work/rollout.yaml" >"$work/run.log" 2>&1 &
run_pid=$!
wait_for "the first revision to be enforced" json '"phase":"Enforced"'
table
probe "$api" "$postgres" 5432/TCP
probe "$frontend" "$postgres" 5432/TCP

step "2. A commit that would cut the API off its database: audited on live traffic, blocked"
cp "$example/changes/2-breaks-the-database.yaml" "$repo/postgres.yaml"
git_ commit -q -am "postgres: only schema migrations may connect"
say "git show --stat HEAD"; git_ show --stat --format='%h %s' HEAD
wait_for "the audit to block it" json '"phase":"Blocked"'
table
p describe rollout shop --local --state "$state"
echo "(the first revision is still enforced: the API keeps its database)"
probe "$api" "$postgres" 5432/TCP
say "palisade observe --local --verdict diff --last 5"
timeout 2 "$palisade" observe --local --state "$state" --verdict diff --last 5 || [ $? -eq 124 ]

step "3. The fix supersedes it, passes the audit and is promoted: one atomic flip"
cp "$example/changes/3-fix.yaml" "$repo/postgres.yaml"
git_ commit -q -am "postgres: the API and migrations; never the frontend"
fix=$(git_ rev-parse --short=7 HEAD)
wait_for "the fix to be promoted" wide "main@${fix}.*Enforced"
table
grep -h "flipped" "$work/run.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g'
probe "$api" "$postgres" 5432/TCP
probe "$frontend" "$postgres" 5432/TCP

step "4. Rollback is git revert: back to a revision enforced before, without a new audit"
first=$(git_ rev-list --max-parents=0 HEAD | cut -c1-7)
say "git revert --no-edit HEAD HEAD~1"
git_ revert --no-edit HEAD HEAD~1 >/dev/null
git_ log --oneline -2
started=$SECONDS
wait_for "the revert to be fast-tracked" json '"outcome":"FastTracked"'
table
echo "(restored in about $((SECONDS - started))s: content-addressed, the revert is the revision of commit $first)"
probe "$api" "$postgres" 5432/TCP

step "Done"
echo "Everything ran on real traffic through the eBPF datapath; 'make test' runs the same story as tests."
