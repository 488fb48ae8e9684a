#!/bin/sh
# Regenerates the configuration reference in docs/reference.md (between the GENERATED
# REFERENCE markers) from the clap definitions: `kube-ssh-tunnel reference`. tests/docs.rs
# checks it.
set -eu
cd "$(dirname "$0")/.."
ref=$(mktemp)
trap 'rm -f "$ref" docs/reference.md.tmp' EXIT
cargo run --quiet -- reference > "$ref"
awk -v ref="$ref" '
  /^<!-- BEGIN GENERATED REFERENCE/ { print; while ((getline line < ref) > 0) print line; skip = 1; next }
  /^<!-- END GENERATED REFERENCE/ { skip = 0 }
  !skip { print }
' docs/reference.md > docs/reference.md.tmp
mv docs/reference.md.tmp docs/reference.md
echo "docs/reference.md: configuration reference regenerated"
