#!/usr/bin/env python3
"""make_corpus.py — writes the seed corpora of the fuzz harnesses (tests/fuzz/corpus/NAME/).

Run from anywhere: python3 tests/fuzz/make_corpus.py. The files are small and committed; this script documents
how they were made and can regenerate them. Inputs that once failed are added by hand as crash-<what> files and
are not touched here."""
import json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))


def out(name, fname, data):
    d = os.path.join(HERE, "corpus", name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, fname), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def fnv(b):  # runtime/safetensors.cpp bytes_hash: FNV-1a over 8-byte words, then the tail bytes
    h, m, i = 0xcbf29ce484222325, (1 << 64) - 1, 0
    while i + 8 <= len(b):
        h = ((h ^ int.from_bytes(b[i:i + 8], "little")) * 0x100000001b3) & m
        i += 8
    for x in b[i:]:
        h = ((h ^ x) * 0x100000001b3) & m
    return "%016x" % h


def safetensors(tensors, meta, checksums=True, pad=True):
    header, data = {}, b""
    if meta is not None or checksums:
        meta = dict(meta or {})
        if checksums:
            meta["aq_checksums"] = json.dumps({n: fnv(b) for n, _, _, b in tensors}, separators=(",", ":"))
        header["__metadata__"] = meta
    for name, dtype, shape, b in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    text = json.dumps(header, separators=(",", ":"))
    if pad:
        text += " " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text.encode() + data


f32 = lambda *v: struct.pack("<%df" % len(v), *v)
model_meta = {"n_layer": "1", "n_head": "2", "n_embd": "4", "vocab_size": "8", "n_positions": "4",
              "checkpoint_id": "1a2b3c4d", "step": "12"}
state_meta = {"step": "12", "checkpoint_id": "1a2b3c4d", "rng_state": "[1,2,3,4]", "balance_micro": "[1,1]",
              "ef_centres": "[\"0\",\"1\"]", "outer_fragments": "2", "outer_pending": "[[0,13]]"}

# ---- safetensors: whole files
out("safetensors", "checkpoint.safetensors", safetensors(
    [("wte.weight", "F32", [2, 3], f32(*range(6))), ("ln_f.bias", "F32", [3], f32(1, 2, 3))], model_meta))
out("safetensors", "dtypes.safetensors", safetensors(
    [("a", "F64", [2], struct.pack("<2d", 1.5, -2)), ("b", "BF16", [3], b"\x80\x3f\x00\x40\x00\xc0"),
     ("c", "F16", [2], b"\x00\x3c\x00\x7c"), ("d", "I64", [1], struct.pack("<q", 7)), ("e", "F32", [0], b""),
     ("f", "F32", [1, 0, 2], b"")], None, checksums=False))
out("safetensors", "hf_no_meta.safetensors", safetensors(
    [("transformer.h.0.attn.bias", "F32", [1, 1, 2, 2], f32(1, 0, 1, 1))], None, checksums=False, pad=False))
out("safetensors", "bad_checksum.safetensors", safetensors(
    [("x", "F32", [2], f32(1, 2))], {"aq_checksums": "{\"x\":\"0000000000000000\"}"}, checksums=False))
out("safetensors", "overlap.safetensors", struct.pack("<Q", 96) + json.dumps(
    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, separators=(",", ":")).ljust(96).encode() + bytes(12))
out("safetensors", "tiny", b"\x02\x00\x00\x00\x00\x00\x00\x00{}")

# ---- checkpoint_meta: the JSON header only; the harness appends 64 data bytes (i*37+1 mod 256)
data64 = bytes((i * 37 + 1) & 255 for i in range(64))


def header(meta, tensors):
    h = {"__metadata__": dict(meta)}
    sums = {}
    for name, dtype, shape, a, b in tensors:
        h[name] = {"dtype": dtype, "shape": shape, "data_offsets": [a, b]}
        sums[name] = fnv(data64[a:b])
    h["__metadata__"]["aq_checksums"] = json.dumps(sums, separators=(",", ":"))
    return json.dumps(h, separators=(",", ":"))


out("checkpoint_meta", "model.json", header(model_meta, [("wte.weight", "F32", [2, 4], 0, 32), ("wpe.weight", "F32", [4], 32, 48)]))
out("checkpoint_meta", "state.json", header(state_meta, [("exp_avg.wte.weight", "F32", [2, 2], 0, 16),
                                                         ("exp_avg_sq.wte.weight", "BF16", [8], 16, 32)]))
out("checkpoint_meta", "hf.json", json.dumps({"__metadata__": {"format": "pt"},
                                              "h.0.ln_1.weight": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}))
out("checkpoint_meta", "bad_ints.json", json.dumps({"__metadata__": {"step": "12x", "n_layer": "-1", "n_head": "",
                                                                     "n_embd": "99999999999999999999", "vocab_size": 5}}))

# ---- shard: byte 0 picks the vocabulary (2^(b%17)), byte 1 the batch shape, then the llm.c shard file
def shard(tokens, magic=20240520, version=1, count=None):
    hdr = struct.pack("<3i", magic, version, len(tokens) if count is None else count) + bytes(4 * 253)
    return hdr + struct.pack("<%dH" % len(tokens), *tokens)


out("shard", "bytes_vocab", bytes([8, 0b0101]) + shard([i % 256 for i in range(40)]))
out("shard", "full_vocab", bytes([16, 0x3f]) + shard([65535, 0, 1, 2, 3, 60000] * 20))
out("shard", "token_too_large", bytes([4, 1]) + shard([1, 2, 17, 3]))
out("shard", "truncated", bytes([8, 1]) + shard([1, 2, 3, 4])[:-3])
out("shard", "bad_magic", bytes([8, 1]) + shard([1, 2], magic=7))
out("shard", "negative_count", bytes([8, 1]) + shard([], count=-5))

# ---- cli_numbers: one value per line
out("cli_numbers", "ints", "12\n-3\n0\n2147483647\n-2147483648\n9223372036854775807\n18446744073709551615\n")
out("cli_numbers", "floats", "3e-4\n1e308\n-1.5e-320\nnan\ninf\n0x1p3\n.5\n")
out("cli_numbers", "weird", "0x10\n0b101\n0o17\n1,000\n 7\n7 \n+4\n1_000\n")
out("cli_numbers", "balance", "3,1\n1,1,1,1\n100000,1\n100001\n3,,1\n3,1,\n,\n-1\n")
out("cli_numbers", "centres", "auto\n2\n3\n0\n4x\n99999999999999999999\n")

# ---- tokenizer_json: small byte-level BPE files (tests/fuzz/tokenizer_vocab.h builds the same kind in C++)
def byte_to_cp():
    t, nxt = {}, 256
    for c in range(256):
        pr = (ord("!") <= c <= ord("~")) or (0xA1 <= c <= 0xAC) or (0xAE <= c <= 0xFF)
        t[c] = c if pr else nxt
        nxt += 0 if pr else 1
    return t


CP = byte_to_cp()
mapped = lambda b: "".join(chr(CP[x]) for x in b)
merges = [(b"t", b"h"), (b"th", b"e"), (b" ", b"t"), (b" ", b"the"), (b"i", b"n"), (b"in", b"g"), (b"a", b"a"),
          (b"aa", b"aa"), (b" ", b" "), (b"1", b"2")]
GPT2_RE = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
L3_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
         "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def tok_json(llama3=False, pairs=False, **over):
    vocab = {mapped(bytes([b])): b for b in range(256)}
    for a, b in merges:
        vocab[mapped(a + b)] = len(vocab)
    ms = [[mapped(a), mapped(b)] if pairs else mapped(a) + " " + mapped(b) for a, b in merges]
    pre = ({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": L3_RE}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]} if llama3 else
        {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True})
    j = {"version": "1.0", "added_tokens": [{"id": len(vocab), "content": "<|endoftext|>", "special": True}],
         "normalizer": None, "pre_tokenizer": pre, "decoder": {"type": "ByteLevel"},
         "model": {"type": "BPE", "ignore_merges": llama3, "vocab": vocab, "merges": ms}}
    for k, v in over.items():
        j[k] = v
    return json.dumps(j, ensure_ascii=False)


out("tokenizer_json", "gpt2_small.json", tok_json())
out("tokenizer_json", "llama3_small.json", tok_json(llama3=True, pairs=True))
out("tokenizer_json", "wordpiece.json", json.dumps({"model": {"type": "WordPiece", "vocab": {"a": 0}}}))
out("tokenizer_json", "normalizer.json", tok_json(normalizer={"type": "NFC"}))
out("tokenizer_json", "missing_byte.json", json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                                       "pre_tokenizer": {"type": "ByteLevel"}}))

# ---- tokenizer_roundtrip: text
out("tokenizer_roundtrip", "english", "The theatre's seats: they're in the 12th row, and the  thing  is\n\nthat.")
out("tokenizer_roundtrip", "long_runs", "a" * 200 + " " * 90 + "1234567890" * 8 + "\n" * 70 + "x y z xyz yz")
out("tokenizer_roundtrip", "unicode", "caf\u00e9 na\u00efve \u4e2d\u6587 \u0661\u0662\u0663 \U0001F600 \u00a0\u2003end")
out("tokenizer_roundtrip", "invalid_utf8", b"\xff\xfe\xc3\x28 \xe2\x82 ok \xf0\x9f\x98 \x80\x00tail'S'LL")
