#!/usr/bin/env bash
# prepare_guards.sh — aq-prepare's guards against inputs and outputs that would silently spoil a dataset:
#   * shards of an earlier run in the same --out are removed (one line says how many) once the new text has been
#     read, so OUT/train_*.bin holds this run's shards only; other files in OUT are left alone;
#   * a binary input (a NUL byte, or mostly invalid UTF-8, in its first 64 KiB) is refused in one line naming the
#     file and the byte offset, for the bytes and the BPE paths; --allow-binary takes it; Latin-1 text passes;
#   * a directory given as input is refused in one line (aq-prepare does not recurse);
#   * a refused run leaves the earlier shards in place.
#
#   bash tests/cli/prepare_guards.sh build/bin [SOURCE_DIR]
# Prints "ok NAME" or "FAIL NAME: reason" per case, then "N passed, M failed"; exits 1 if any case failed.
set -u

BIN=${1:?usage: prepare_guards.sh BUILD_BIN_DIR [SOURCE_DIR]}
SRC=${2:-$(cd "$(dirname "$0")/../.." && pwd)}
PREP=$BIN/aq-prepare
[[ -x $PREP ]] || { echo "FAIL setup: $PREP is missing (build it first)"; exit 1; }
export LC_ALL=C OMP_NUM_THREADS=1
TMP=$(mktemp -d /tmp/aq-prepare-guards-XXXXXX) || exit 1
trap 'rm -rf "$TMP"' EXIT
passed=0 failed=0
ok() { echo "ok $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1: $2"; failed=$((failed + 1)); }

# refused NAME REGEX -- CMD...: CMD exits 1 with exactly one stderr line "aq-prepare: error: ..." matching REGEX.
refused() {
  local name=$1 regex=$2
  shift 3
  "$@" >"$TMP/stdout" 2>"$TMP/stderr"
  local rc=$? lines
  lines=$(awk 'END { print NR }' "$TMP/stderr")
  if ((rc != 1)); then
    fail "$name" "exit code $rc, expected 1 (stderr: $(cat "$TMP/stderr"))"
  elif [[ $lines != 1 ]] || ! grep -qE '^aq-prepare: error: ' "$TMP/stderr"; then
    fail "$name" "expected one 'aq-prepare: error:' line, got: $(tr '\n' '|' <"$TMP/stderr")"
  elif ! grep -qE -- "$regex" "$TMP/stderr"; then
    fail "$name" "stderr does not match /$regex/: $(cat "$TMP/stderr")"
  else
    ok "$name"
  fi
}
shards() { (cd "$1" && ls 2>/dev/null | grep -E '^(train|val)_[0-9]{3,}\.bin$' | tr '\n' ' '); }

# Text: ~60 KB of words (15 train + 1 val block at --shard-tokens 4096 / 4 KiB blocks) and a short one.
awk 'BEGIN { srand(3); split("the of and to in a is that for it as was with be by on zebra quiz", w, " ");
  for (s = 0; s < 60000;) { line = w[1 + int(rand() * 18)] " " w[1 + int(rand() * 18)] ".\n"; printf "%s", line; s += length(line) } }' \
  >"$TMP/big.txt"
head -c 9000 "$TMP/big.txt" >"$TMP/small.txt"

# ---- stale shards ------------------------------------------------------------------------------------------------
OUT=$TMP/out
"$PREP" --out "$OUT" --shard-tokens 4096 --val-fraction 0.1 "$TMP/big.txt" >"$TMP/log1" 2>&1 ||
  { echo "FAIL setup: aq-prepare on text: $(tail -1 "$TMP/log1")"; exit 1; }
first=$(shards "$OUT")
n_first=$(wc -w <<<"$first")
echo keep >"$OUT/notes.txt"
echo keep >"$OUT/train_abc.bin"              # not aq-prepare's naming: left alone
touch "$OUT/train_003.bin.tmp.4242"           # a killed run's temporary: removed
"$PREP" --out "$OUT" --val-fraction 0.5 "$TMP/small.txt" >"$TMP/log2" 2>&1 ||
  { echo "FAIL setup: second aq-prepare: $(tail -1 "$TMP/log2")"; exit 1; }
second=$(shards "$OUT")
if ((n_first < 5)); then
  fail stale_shards_removed "the first run wrote only $n_first shards ($first); expected several"
elif ! grep -qE "removed $((n_first + 1)) shard file\(s\) of an earlier run from $OUT" "$TMP/log2"; then
  fail stale_shards_removed "no 'removed $((n_first + 1)) shard file(s)' line: $(tr '\n' '|' <"$TMP/log2")"
elif [[ $second != "train_000.bin val_000.bin " ]]; then
  fail stale_shards_removed "OUT holds '$second' after the second run, expected 'train_000.bin val_000.bin '"
elif [[ ! -f $OUT/notes.txt || ! -f $OUT/train_abc.bin || -e $OUT/train_003.bin.tmp.4242 ]]; then
  fail stale_shards_removed "other files were touched, or the stale temporary was kept: $(ls "$OUT" | tr '\n' ' ')"
else
  ok stale_shards_removed
fi
# The second run's shards hold exactly small.txt's bytes (header 1024 bytes, then uint16 tokens).
python3 - "$OUT" "$TMP/small.txt" <<'PY' && ok stale_shards_content || fail stale_shards_content "shards do not hold small.txt"
import struct, sys
d, text = sys.argv[1], open(sys.argv[2], "rb").read()
toks = []
for name in ("train_000.bin", "val_000.bin"):
    b = open(f"{d}/{name}", "rb").read()
    n = struct.unpack("<3i", b[:12])[2]
    toks.append(list(struct.unpack(f"<{n}H", b[1024:1024 + 2 * n])))
train, val = toks
# --val-fraction 0.5: blocks of 4096 bytes alternate train, val, train.
expect_train = list(text[:4096]) + list(text[8192:])
sys.exit(0 if train == expect_train and val == list(text[4096:8192]) else 1)
PY

# ---- binary inputs -----------------------------------------------------------------------------------------------
{ head -c 100 "$TMP/small.txt"; printf '\0'; head -c 5000 "$TMP/small.txt"; } >"$TMP/nul.bin"
python3 -c "import random,sys; random.seed(5); sys.stdout.buffer.write(bytes(random.randint(1, 255) for _ in range(20000)))" \
  >"$TMP/random.bin"
before=$(shards "$OUT")
refused binary_nul "input file $TMP/nul\.bin looks binary: a NUL byte at byte offset 100; .*--allow-binary" -- \
  "$PREP" --out "$OUT" "$TMP/small.txt" "$TMP/nul.bin"
refused binary_invalid_utf8 "input file $TMP/random\.bin looks binary: [0-9]+ of its first 20000 bytes are not valid UTF-8 \(the first at byte offset [0-9]+\).*--allow-binary" -- \
  "$PREP" --out "$OUT" "$TMP/random.bin"
refused binary_bpe_path "input file $TMP/nul\.bin looks binary: a NUL byte at byte offset 100" -- \
  "$PREP" --out "$OUT" --tokenizer "$SRC/tests/fuzz/corpus/tokenizer_json/gpt2_small.json" --threads 2 \
  "$TMP/small.txt" "$TMP/nul.bin"
if [[ $(shards "$OUT") == "$before" && -f $OUT/notes.txt ]]; then
  ok refused_run_keeps_shards
else
  fail refused_run_keeps_shards "OUT changed: '$before' -> '$(shards "$OUT")'"
fi
if "$PREP" --out "$TMP/allow" --val-fraction 0.5 --allow-binary "$TMP/random.bin" >"$TMP/log3" 2>&1 && [[ -f $TMP/allow/train_000.bin ]]; then
  ok allow_binary
else
  fail allow_binary "aq-prepare --allow-binary failed: $(tail -1 "$TMP/log3")"
fi
# Latin-1 prose (é as the single byte 0xE9, not UTF-8): a few invalid bytes, far below a quarter.
python3 -c "import sys; sys.stdout.buffer.write(('caf\xe9 cr\xe8me br\xfbl\xe9e, d\xe9j\xe0 vu. ' * 400).encode('latin-1'))" \
  >"$TMP/latin1.txt"
if "$PREP" --out "$TMP/latin1" --val-fraction 0.5 "$TMP/latin1.txt" >"$TMP/log4" 2>&1; then
  ok latin1_text_accepted
else
  fail latin1_text_accepted "$(tail -1 "$TMP/log4")"
fi

# ---- a directory as input ----------------------------------------------------------------------------------------
mkdir -p "$TMP/texts"
cp "$TMP/small.txt" "$TMP/texts/a.txt"
refused directory_input "input $TMP/texts is a directory; give the text files in it, e\.g\. $TMP/texts/\*\.txt" -- \
  "$PREP" --out "$TMP/dir_out" "$TMP/texts"
refused directory_input_bpe "input $TMP/texts is a directory" -- \
  "$PREP" --out "$TMP/dir_out" --tokenizer "$SRC/tests/fuzz/corpus/tokenizer_json/gpt2_small.json" "$TMP/texts"

echo "$passed passed, $failed failed"
((failed == 0))
