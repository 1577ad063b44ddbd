// gpt2_encode.js — the second implementation for tests/runtime/tokenizer_gpt2.sh: GPT-2 ids from the npm package
// gpt-3-encoder (its Encoder.js, regex and BPE), one line of ids per input file.
//
//   node gpt2_encode.js VOCAB_DIR FILE...
//   node gpt2_encode.js --llama3-pieces FILE...   byte lengths of Llama-3's pre-tokens (JS regex; (?i:) spelt out)
// A file that is valid UTF-8 goes through the package's own encode(). A file with invalid bytes cannot be a JS
// string, so each invalid byte becomes a private-use character (U+F0000 + byte: not a letter, number or space, as
// the C++ tokenizer classes an invalid byte), the package's regex cuts the string, and each piece is turned back
// into its bytes (the private-use characters into their byte) before the package's bpe() and vocabulary.
'use strict';
const fs = require('fs');
const path = require('path');
const dir = process.argv[2];
const llama3 = dir === '--llama3-pieces';
const llama3_pat = new RegExp("'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|" +
  "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", 'gu');
const src = llama3 ? '' : fs.readFileSync(path.join(dir, 'Encoder.js'), 'utf-8') +
  '\nmodule.exports.bpe = bpe; module.exports.encoder = encoder; module.exports.byte_encoder = byte_encoder;' +
  ' module.exports.pat = pat;';
const mod = { exports: {} };
if (!llama3) new Function('require', '__dirname', 'module', 'exports', src)(require, dir, mod, mod.exports);
const { encode, bpe, encoder, byte_encoder, pat } = mod.exports;

// Length of the valid UTF-8 sequence at i (Unicode Table 3-7), 0 when the byte starts none.
function utf8_len(b, i) {
  const c = b[i], n = b.length - i;
  const cont = (k, lo, hi) => k < n && b[i + k] >= lo && b[i + k] <= hi;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf && cont(1, 0x80, 0xbf)) return 2;
  if (c >= 0xe0 && c <= 0xef && cont(1, c === 0xe0 ? 0xa0 : 0x80, c === 0xed ? 0x9f : 0xbf) && cont(2, 0x80, 0xbf)) return 3;
  if (c >= 0xf0 && c <= 0xf4 && cont(1, c === 0xf0 ? 0x90 : 0x80, c === 0xf4 ? 0x8f : 0xbf) && cont(2, 0x80, 0xbf) &&
      cont(3, 0x80, 0xbf)) return 4;
  return 0;
}

function to_string(b) {
  const parts = [];
  for (let i = 0; i < b.length;) {
    const len = utf8_len(b, i);
    if (len === 0) {
      parts.push(String.fromCodePoint(0xf0000 + b[i]));
      i += 1;
    } else {
      parts.push(b.subarray(i, i + len).toString('utf-8'));
      i += len;
    }
  }
  return parts.join('');
}

function piece_bytes(piece) {
  const bytes = [];
  for (const ch of piece) {
    const cp = ch.codePointAt(0);
    if (cp >= 0xf0000 && cp <= 0xf00ff) bytes.push(cp - 0xf0000);
    else for (const x of Buffer.from(ch, 'utf-8')) bytes.push(x);
  }
  return bytes;
}

if (llama3) {
  for (const f of process.argv.slice(3)) {
    const lens = [];
    for (const m of to_string(fs.readFileSync(f)).matchAll(llama3_pat)) lens.push(piece_bytes(m[0]).length);
    process.stdout.write(lens.join(' ') + '\n');
  }
  process.exit(0);
}

function encode_bytes(b) {
  // Invalid bytes stand as private-use code points (to_string) and come back as themselves (piece_bytes).
  const ids = [];
  for (const m of to_string(b).matchAll(pat)) {
    const token = piece_bytes(m[0]).map(x => byte_encoder[x]).join('');
    for (const t of bpe(token).split(' ')) ids.push(encoder[t]);
  }
  return ids;
}

const strict = new TextDecoder('utf-8', { fatal: true });
for (const f of process.argv.slice(3)) {
  const buf = fs.readFileSync(f);
  let ids;
  try {
    ids = encode(strict.decode(buf));
  } catch (e) {
    if (!(e instanceof TypeError)) throw e;
    ids = encode_bytes(buf);
  }
  process.stdout.write(ids.join(' ') + '\n');
}
