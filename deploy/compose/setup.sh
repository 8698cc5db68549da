#!/usr/bin/env bash
# Prepares ./mesh for compose.yaml: builds the image, makes a CA, and for
# the issuer and each agent a home with an identity, a credential, a token
# and a config. Every meshagent command runs in the image (no meshagent on
# the host needed), as you, so the files are yours (keys 0600, homes 0700).
# Run it once; it refuses to overwrite an existing ./mesh.
set -euo pipefail
cd "$(dirname "$0")"
if [ -e mesh ]; then echo "setup.sh: ./mesh exists: remove it to start over" >&2; exit 1; fi
export MESH_UID="$(id -u)" MESH_GID="$(id -g)"
docker compose build anchor
mkdir -m 0700 mesh
m() { docker run --rm --user "$MESH_UID:$MESH_GID" -v "$PWD/mesh:/mesh" meshagent:local "$@"; }

anchor_id="$(m ca init --dir /mesh/ca)"
issuer_id=""
for name in anchor alice bob carol; do
  id="$(m init --home "/mesh/$name" --name "$name")"
  m ca issue --dir /mesh/ca --agent "$id" --name "$name" --out "/mesh/$name/credential.pem"
  m token issue --ca /mesh/ca --to "$id" --scopes ping:agent --ttl 168h --out "/mesh/$name/agent.token"
  extra="bootstrap: [/dns4/anchor/tcp/4001/p2p/$issuer_id]"
  if [ "$name" = anchor ]; then issuer_id="$id"; extra="issuer_key: /ca/anchor.key"; fi
  # The config init wrote, replaced by the one for this network.
  cat > "mesh/$name/meshagent.yaml" <<YAML
name: $name
listen: [/ip4/0.0.0.0/tcp/4001, /ip4/0.0.0.0/udp/4001/quic-v1]
anchors: [$anchor_id]
credential: credential.pem
tokens: [agent.token]
audit_log: audit.log
api_socket: api.sock
# Metrics and /healthz, /readyz for Prometheus on the compose network.
metrics_listen: 0.0.0.0:9464
$extra
YAML
  chmod 0600 "mesh/$name/meshagent.yaml"
done
# compose.yaml runs the daemons as you: it reads .env.
printf 'MESH_UID=%s\nMESH_GID=%s\n' "$MESH_UID" "$MESH_GID" > .env
echo "anchor ID $anchor_id; issuer $issuer_id"
echo "now: docker compose up -d"
