#!/usr/bin/env bash
# tokenizer_gpt2.sh — GPT-2's tokenizer in C++ against a second implementation: the npm package gpt-3-encoder's
# JS encoder run by node, on ~1.4 MB of mixed text (tests/runtime/make_mixed_text.py, fresh seed each run: English,
# code, CJK, emoji, other scripts and digits, long whitespace runs, invalid UTF-8); ids must be identical per file.
# Then aq-prepare --tokenizer gpt2 on some of the files (shard holds EOT + ids of each document), and the encode
# speed on English (printed, never asserted).
#
#   bash tests/runtime/tokenizer_gpt2.sh build/bin/tokenize_tool build/bin
# Skips (77) with a reason when node or the GPT-2 files cannot be had (scripts/fetch_gpt2_vocab.sh).
# Where the JS reference is not GPT-2's (Python regex / tiktoken): its \s is JS's (U+FEFF is a space, U+0085 is
# not; Unicode White_Space has it the other way), so the text holds neither; and node's ICU has a newer Unicode
# (letters assigned since Unicode 15.0 are punctuation to ICU 72), so the text uses long-assigned characters.
set -u
TOOL=${1:?usage: tokenizer_gpt2.sh TOKENIZE_TOOL BIN_DIR}
BIN=${2:?usage: tokenizer_gpt2.sh TOKENIZE_TOOL BIN_DIR}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VOCAB=${AQ_GPT2_VOCAB:-$ROOT/data/gpt2-vocab}
command -v node >/dev/null || { echo "SKIP: node is not installed (apt-get install nodejs)"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed"; exit 77; }
if ! bash "$ROOT/scripts/fetch_gpt2_vocab.sh" "$VOCAB"; then
  echo "SKIP: GPT-2's vocabulary cannot be had (see the line above)"
  exit 77
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
SEED=${AQ_TEST_SEED:-$RANDOM}
python3 "$ROOT/tests/runtime/make_mixed_text.py" "$WORK/text" "$ROOT" "$SEED" || { echo "FAIL: text generation"; exit 1; }
files=("$WORK"/text/*.txt)
bytes=$(cat "${files[@]}" | wc -c)
node "$ROOT/tests/runtime/gpt2_encode.js" "$VOCAB" "${files[@]}" > "$WORK/js.ids" || { echo "FAIL: node reference"; exit 1; }
"$TOOL" gpt2 "$VOCAB" ids "${files[@]}" > "$WORK/cpp.ids" || { echo "FAIL: tokenize_tool"; exit 1; }
fail=0
if cmp -s "$WORK/js.ids" "$WORK/cpp.ids"; then
  echo "ok ids identical to gpt-3-encoder (node) on ${#files[@]} files, $bytes bytes, $(wc -w < "$WORK/cpp.ids") tokens (seed $SEED)"
else
  fail=1
  n=$(paste -d'\n' "$WORK/js.ids" "$WORK/cpp.ids" | awk 'NR%2==1{a=$0} NR%2==0 && a!=$0{c++} END{print c+0}')
  first=$(awk 'NR==FNR{a[FNR]=$0; next} a[FNR]!=$0{print FNR; exit}' "$WORK/js.ids" "$WORK/cpp.ids")
  echo "FAIL ids differ in $n of ${#files[@]} files (seed $SEED); first: ${files[$((first - 1))]##*/}"
  sed -n "${first}p" "$WORK/js.ids" | tr ' ' '\n' > "$WORK/a"; sed -n "${first}p" "$WORK/cpp.ids" | tr ' ' '\n' > "$WORK/b"
  diff "$WORK/a" "$WORK/b" | head -5
fi

# Llama-3's pre-tokenisation (used by Llama-3-style tokenizer.json files) against node's regex engine running the
# same pattern ((?i:) spelt out as [sS] etc.): identical pre-token boundaries on the same text.
node "$ROOT/tests/runtime/gpt2_encode.js" --llama3-pieces "${files[@]}" > "$WORK/js.pieces" || { echo "FAIL: node llama3"; exit 1; }
"$TOOL" - - llama3-pieces "${files[@]}" > "$WORK/cpp.pieces" || { echo "FAIL: tokenize_tool llama3-pieces"; exit 1; }
if cmp -s "$WORK/js.pieces" "$WORK/cpp.pieces"; then
  echo "ok Llama-3 pre-tokens identical to node's regex on ${#files[@]} files ($(wc -w < "$WORK/cpp.pieces") pieces)"
else
  echo "FAIL Llama-3 pre-tokens differ from node's regex"; fail=1
fi

# aq-prepare: each file a document, <|endoftext|> (50256) before each; the shards hold exactly that.
"$BIN/aq-prepare" --tokenizer gpt2 --vocab "$VOCAB" --out "$WORK/shards" --val-fraction 0.5 --threads 2 \
  "${files[0]}" "${files[1]}" "${files[2]}" > "$WORK/prep.log" 2>&1 || { echo "FAIL aq-prepare: $(tail -n1 "$WORK/prep.log")"; exit 1; }
python3 - "$WORK/shards" "$WORK/cpp.ids" <<'PY' || fail=1
import glob, struct, sys
shards, ids = sys.argv[1], open(sys.argv[2]).read().split("\n")
expect = []
for line in ids[:3]:
    expect += [50256] + [int(x) for x in line.split()]
got = {}
for split in ("train", "val"):
    toks = []
    for f in sorted(glob.glob(f"{shards}/{split}_*.bin")):
        data = open(f, "rb").read()
        head = struct.unpack("<256i", data[:1024])
        assert head[0] == 20240520 and head[1] == 1, f"{f}: bad header"
        toks += list(struct.unpack(f"<{head[2]}H", data[1024:1024 + 2 * head[2]]))
    got[split] = toks
# Blocks of 1024 tokens alternate train/val at --val-fraction 0.5: interleave them back.
merged, t, v = [], got["train"], got["val"]
for b in range(0, len(t) + len(v), 1024):
    src = t if (b // 1024) % 2 == 0 else v
    k = (b // 2048) * 1024
    merged += src[k:k + 1024]
if merged != expect:
    print(f"FAIL aq-prepare shards: {len(merged)} tokens, expected {len(expect)}")
    sys.exit(1)
print(f"ok aq-prepare shards hold EOT + ids of each document ({len(expect)} tokens, train {len(t)}, val {len(v)})")
PY

# The same vocabulary as a Hugging Face tokenizer.json (merges as "a b" strings, then as pairs): same ids.
for style in strings pairs; do
  python3 - "$VOCAB" "$WORK/tokenizer.json" "$style" <<'PY'
import json, sys
vocab_dir, out, style = sys.argv[1:]
enc = json.load(open(f"{vocab_dir}/encoder.json", encoding="utf-8"))
lines = open(f"{vocab_dir}/vocab.bpe", encoding="utf-8").read().split("\n")[1:]
merges = [l for l in lines if l]
if style == "pairs":
    merges = [l.split(" ") for l in merges]
del enc["<|endoftext|>"]
json.dump({"version": "1.0", "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
           "trim_offsets": True, "use_regex": True}, "decoder": {"type": "ByteLevel"},
           "added_tokens": [{"id": 50256, "content": "<|endoftext|>", "special": True}],
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                     "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "vocab": enc,
                     "merges": merges}}, open(out, "w"))
PY
  "$TOOL" "$WORK/tokenizer.json" "" ids "${files[@]:0:40}" > "$WORK/hf.ids" || { echo "FAIL: tokenizer.json"; exit 1; }
  if head -n 40 "$WORK/cpp.ids" | cmp -s - "$WORK/hf.ids"; then
    echo "ok tokenizer.json (merges as $style) gives the same ids as encoder.json + vocab.bpe on 40 files"
  else
    echo "FAIL tokenizer.json (merges as $style) ids differ from encoder.json + vocab.bpe"; fail=1
  fi
done

# A tiny model trained on GPT-2 tokens, sampled as text (V padded to 50304 as llm.c does).
if "$BIN/aq-train" --data "$WORK/shards/train_*.bin" --vocab 50304 --layers 1 --heads 2 --dim 32 --seq 32 --batch 2 \
     --steps 3 --save "$WORK/tiny" --threads 2 > "$WORK/train.log" 2>&1 &&
   "$BIN/aq-generate" --model "$WORK/tiny" --tokenizer gpt2 --vocab "$VOCAB" --prompt "The answer is" \
     --tokens 20 --threads 2 > "$WORK/gen.txt" 2> "$WORK/gen.err" && grep -q "^The answer is" "$WORK/gen.txt" &&
   ! grep -Eq "^The answer is( [0-9]+){5}" "$WORK/gen.txt"; then
  echo "ok aq-generate --tokenizer gpt2 prints text: $(head -c 120 "$WORK/gen.txt" | tr '\n' ' ')"
else
  echo "FAIL aq-generate --tokenizer gpt2: $(tail -n1 "$WORK/train.log") $(tail -n1 "$WORK/gen.err" 2>/dev/null)"; fail=1
fi

# Encode speed on English (all of the fortunes corpus), one thread: printed, never asserted.
find /usr/share/games/fortunes -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' -exec cat {} + > "$WORK/english.txt"
"$TOOL" gpt2 "$VOCAB" bench "$WORK/english.txt" | sed 's/^/bench /'
exit $fail
