#!/usr/bin/env bash
# `make images`: builds tre-broker and tre-agent with no container registry,
# and makes the secrets deploy/compose.yaml mounts if they are missing.
#
#   deploy/image/build.sh [replicas]
#
# With `replicas` (`make images-replicas`) it also builds tre-proxy (Caddy)
# and tre-postgres (PostgreSQL 15), Debian's packages on the same base, for
# deploy/compose.replicas.yaml (deploy/replicas/Dockerfile).
#
#   TRE_IMAGE_BASE   image the runtime libraries come from (default
#                    tre-base:bookworm, made here by base.sh when missing;
#                    debian:bookworm-slim where a registry can be reached)
#   TRE_IMAGE_TAG    tag of both images (default dev)
#   TRE_SECRETS_DIR  where the secrets go (default deploy/secrets)
#
# tre is built on the host (cgo, DuckDB) and copied in: the host must run
# the same Debian release as the base (bookworm), see deploy/Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/../.."
base="${TRE_IMAGE_BASE:-tre-base:bookworm}"
tag="${TRE_IMAGE_TAG:-dev}"
secrets="${TRE_SECRETS_DIR:-deploy/secrets}"
go="${GO:-go}"

if [ "$base" = "tre-base:bookworm" ]; then
  deploy/image/base.sh "$base"
fi

ctx=$(mktemp -d /tmp/tre-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
start=$(date +%s)
echo "building tre, the health probe and the registration step"
"$go" build -ldflags="-s -w" -o "$ctx/tre" ./cmd/tre
CGO_ENABLED=0 "$go" build -ldflags="-s -w" -o "$ctx/healthcheck" ./deploy/healthcheck
CGO_ENABLED=0 "$go" build -ldflags="-s -w" -o "$ctx/register" ./deploy/register
for role in broker agent; do
  echo "building tre-$role:$tag from $base"
  docker build -q --build-arg BASE="$base" --target "$role" -t "tre-$role:$tag" -f deploy/Dockerfile "$ctx" >/dev/null
done
if [ "${1:-}" = replicas ]; then
  cp deploy/replicas/postgres.sh "$ctx/"
  for role in proxy postgres; do
    echo "building tre-$role:$tag from $base (Debian's packages)"
    docker build -q --build-arg BASE="$base" --target "$role" -t "tre-$role:$tag" -f deploy/replicas/Dockerfile "$ctx" >/dev/null
  done
fi
# The legacy builder leaves the files stage's image behind, untagged, and a
# rebuild untags the previous images: remove those no container uses.
docker image prune -f --filter label=org.nhs-tre.build=tre >/dev/null
echo "images built in $(( $(date +%s) - start ))s:"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^tre-(broker|agent|proxy|postgres):$tag " | sed 's/^/  /' || true

"$go" run ./deploy/gensecrets -dir "$secrets"
echo "secrets in $secrets (kept if they existed)"
