#!/usr/bin/env bash
# prepare_tokenizer.sh — aq-prepare with a byte-level BPE tokenizer.json built here (no download): every input file
# is a document preceded by <|endoftext|>, the ids are the merges worked out by hand, the shards split train/val
# by 1024-token blocks, and --threads 1 and --threads 2 write identical shards.
#
#   bash tests/runtime/prepare_tokenizer.sh build/bin
set -u
BIN=${1:?usage: prepare_tokenizer.sh BIN_DIR}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 - "$WORK" <<'PY' || { echo "FAIL: setup"; exit 1; }
import json, sys
work = sys.argv[1]
# GPT-2's byte alphabet (bytes_to_unicode).
bs = list(range(33, 127)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
cs, n = bs[:], 0
for b in range(256):
    if b not in bs:
        bs.append(b); cs.append(256 + n); n += 1
m = {b: chr(c) for b, c in zip(bs, cs)}
vocab = {m[b]: b for b in range(256)}
merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), (" ", "w")]
for a, b in merges:
    vocab["".join(m[x] for x in (a + b).encode())] = len(vocab)
tj = {"version": "1.0", "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
      "decoder": {"type": "ByteLevel"}, "added_tokens": [{"id": 261, "content": "<|endoftext|>", "special": True}],
      "model": {"type": "BPE", "vocab": vocab,
                "merges": [" ".join("".join(m[x] for x in t.encode()) for t in p) for p in merges]}}
json.dump(tj, open(f"{work}/tokenizer.json", "w"))
# Document k: "hello world " * (300 + 37 k) then "k\n": ids 259 (hello), 260 (" w"), o r l d, 32 (space)
for k in range(5):
    open(f"{work}/doc{k}.txt", "w").write("hello world " * (300 + 37 * k) + f"{k}\n")
PY
fail=0
for t in 1 2; do
  "$BIN/aq-prepare" --tokenizer "$WORK/tokenizer.json" --out "$WORK/out$t" --val-fraction 0.25 --threads $t \
    "$WORK"/doc{0,1,2,3,4}.txt > "$WORK/log$t" 2>&1 || { echo "FAIL aq-prepare --threads $t: $(tail -n1 "$WORK/log$t")"; exit 1; }
done
for f in "$WORK"/out1/*.bin; do
  cmp -s "$f" "$WORK/out2/${f##*/}" || { echo "FAIL --threads 1 and 2 differ in ${f##*/}"; fail=1; }
done
python3 - "$WORK/out1" <<'PY' || fail=1
import glob, struct, sys
expect = []
for k in range(5):
    expect += [261] + [259, 260, ord("o"), ord("r"), ord("l"), ord("d"), 32] * (300 + 37 * k) + [ord(str(k)), 10]
def read(split):
    toks = []
    for f in sorted(glob.glob(f"{sys.argv[1]}/{split}_*.bin")):
        d = open(f, "rb").read()
        h = struct.unpack("<256i", d[:1024])
        assert h[0] == 20240520 and h[1] == 1 and len(d) == 1024 + 2 * h[2], f"{f}: bad header or size"
        toks += struct.unpack(f"<{h[2]}H", d[1024:])
    return toks
train, val = read("train"), read("val")
blocks = [expect[i:i + 1024] for i in range(0, len(expect), 1024)]  # every 4th block (k = 1/0.25) is validation
want_train = [t for b, blk in enumerate(blocks) if b % 4 != 3 for t in blk]
want_val = [t for b, blk in enumerate(blocks) if b % 4 == 3 for t in blk]
if train != want_train or val != want_val:
    print(f"FAIL shards: train {len(train)} val {len(val)} tokens, expected {len(want_train)} and {len(want_val)}")
    sys.exit(1)
print(f"ok aq-prepare with a tokenizer.json: 5 documents, EOT before each, {len(expect)} tokens as worked out "
      f"(train {len(train)}, val {len(val)})")
PY
((fail == 0)) && echo "ok --threads 1 and --threads 2 write identical shards"
exit $fail
