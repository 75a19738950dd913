#!/usr/bin/env bash
# The offline demo (`make demo`): Palisade's policy engine on the deny-precedence example.
# Local mode (real traffic, live audit and promotion) will replace this story.
set -euo pipefail
cd "$(dirname "$0")/.."
palisade=${CARGO_TARGET_DIR:-target}/release/palisade
example=examples/deny-precedence
cluster=$example/cluster.yaml
policies=$example/policies

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Exit 1 is an answer (a denied flow, a changed diff); anything above is a failure.
run() { printf '$ %s\n' "palisade ${*}"; "$palisade" "$@" || [ $? -eq 1 ]; }

step "1. Validate the policies in Git, and lint them against the cluster"
run check "$policies" --cluster "$cluster"

step "2. Staging may reach the prod database on 5432: a cluster-wide allow decides"
run trace --cluster "$cluster" --policies "$policies" \
    --from staging/orders-api-5a6b7c8d4-u3y4t --to prod/orders-db-0 --port 5432/TCP

step "3. Dev may not, despite the same allow: the deny for env=dev namespaces wins"
run trace --cluster "$cluster" --policies "$policies" \
    --from dev/orders-api-7c8d9e0f6-r5e6w --to prod/orders-db-0 --port 5432/TCP

step "4. What the datapath will hold for the database pod (plan, excerpt)"
printf '$ palisade plan --cluster %s --policies %s | sed -n "/Endpoint prod\\/orders-db-0/,/^$/p"\n' "$cluster" "$policies"
"$palisade" plan --cluster "$cluster" --policies "$policies" | sed -n '/^Endpoint prod\/orders-db-0/,/^$/p'

step "5. A candidate commit drops the dev deny: what would change?"
candidate=$(mktemp -d)
trap 'rm -rf "$candidate"' EXIT
cp "$policies"/*.yaml "$candidate"/
# Remove the CiliumClusterwideNetworkPolicy named deny-dev-to-prod, as the commit would.
python3 - "$candidate/00-clusterwide-security.yaml" <<'PY'
import sys
path = sys.argv[1]
docs = open(path).read().split("\n---\n")
open(path, "w").write("\n---\n".join(d for d in docs if "name: deny-dev-to-prod" not in d))
PY
printf '$ palisade diff --cluster %s --from-policies %s --to-policies CANDIDATE\n' "$cluster" "$policies"
set +e
"$palisade" diff --cluster "$cluster" --from-policies "$policies" --to-policies "$candidate"
code=$?
set -e
echo "(exit $code: connectivity would change, so a rollout would audit it before promotion)"
