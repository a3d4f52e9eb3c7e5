#!/usr/bin/env bash
# Renders the pictures from their Graphviz sources (apt-get install graphviz).
set -euo pipefail
cd "$(dirname "$0")"
for source in *.dot; do
    dot -Tsvg "$source" -o "${source%.dot}.svg"
    dot -Tpng -Gdpi=110 "$source" -o "${source%.dot}.png"
done
