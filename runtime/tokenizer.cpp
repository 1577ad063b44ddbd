// tokenizer.cpp — byte-level BPE: GPT-2 pre-tokenisation by hand, merges by rank, the vocabulary loaders.
#include "runtime/tokenizer.h"

#include <unicode/uchar.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <queue>

#include "runtime/error.h"

namespace aq {

// ---------------------------------------------------------------------------------------------------------------
// Pre-tokenisation

namespace {

enum Cls : uint8_t { kLetter, kNumber, kSpace, kOther };

struct Ch {
  uint32_t cp;  // code point; 0xFFFFFFFF for a byte that is not valid UTF-8
  uint8_t len;  // bytes
  Cls cls;
};

// Unicode White_Space (what \s means in Python's `regex` and in tiktoken's Rust regex).
bool is_white_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

Cls classify(uint32_t c) {
  if (is_white_space(c)) return kSpace;
  const uint32_t mask = U_GET_GC_MASK(static_cast<UChar32>(c));
  if (mask & U_GC_L_MASK) return kLetter;
  if (mask & U_GC_N_MASK) return kNumber;
  return kOther;
}

struct AsciiTable {
  Cls cls[128];
  AsciiTable() {
    for (uint32_t c = 0; c < 128; ++c) cls[c] = classify(c);
  }
};
const AsciiTable kAscii;

// Strict UTF-8 (Unicode Table 3-7): no overlongs, no surrogates, nothing above U+10FFFF.
inline Ch peek(const uint8_t* p, size_t n, size_t i) {
  const uint8_t b = p[i];
  if (b < 0x80) return {b, 1, kAscii.cls[b]};
  const size_t left = n - i;
  auto cont = [&](size_t k, uint8_t lo, uint8_t hi) { return k < left && p[i + k] >= lo && p[i + k] <= hi; };
  uint32_t cp;
  uint8_t len;
  if (b >= 0xC2 && b <= 0xDF && cont(1, 0x80, 0xBF)) {
    cp = (b & 0x1Fu) << 6 | (p[i + 1] & 0x3Fu);
    len = 2;
  } else if (b >= 0xE0 && b <= 0xEF && cont(1, b == 0xE0 ? 0xA0 : 0x80, b == 0xED ? 0x9F : 0xBF) &&
             cont(2, 0x80, 0xBF)) {
    cp = (b & 0x0Fu) << 12 | (p[i + 1] & 0x3Fu) << 6 | (p[i + 2] & 0x3Fu);
    len = 3;
  } else if (b >= 0xF0 && b <= 0xF4 && cont(1, b == 0xF0 ? 0x90 : 0x80, b == 0xF4 ? 0x8F : 0xBF) &&
             cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF)) {
    cp = (b & 0x07u) << 18 | (p[i + 1] & 0x3Fu) << 12 | (p[i + 2] & 0x3Fu) << 6 | (p[i + 3] & 0x3Fu);
    len = 4;
  } else {
    return {0xFFFFFFFFu, 1, kOther};
  }
  return {cp, len, classify(cp)};
}

}  // namespace

void gpt2_pretokenize(std::string_view text, std::vector<std::string_view>& out) {
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const Ch c = peek(p, n, i);
    const size_t start = i;
    // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive, tried first)
    if (c.cp == '\'' && i + 1 < n) {
      const char a = static_cast<char>(p[i + 1]);
      size_t len = 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        len = 2;
      } else if (i + 2 < n) {
        const char b = static_cast<char>(p[i + 2]);
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) len = 3;
      }
      if (len) {
        out.emplace_back(text.data() + start, len);
        i += len;
        continue;
      }
    }
    //  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+
    Ch d = c;
    size_t j = i;
    if (c.cp == ' ' && i + 1 < n) {
      const Ch e = peek(p, n, i + 1);
      if (e.cls != kSpace) {
        d = e;
        j = i + 1;
      }
    }
    if (d.cls != kSpace) {
      j += d.len;
      while (j < n) {
        const Ch e = peek(p, n, j);
        if (e.cls != d.cls) break;
        j += e.len;
      }
      out.emplace_back(text.data() + start, j - start);
      i = j;
      continue;
    }
    // \s+(?!\S) | \s+ : a whitespace run; when a non-space follows it, the run's last character is left for the
    // next pre-token (so " word" keeps its space), unless the run is that one character.
    size_t last = i;
    j = i + c.len;
    while (j < n) {
      const Ch e = peek(p, n, j);
      if (e.cls != kSpace) break;
      last = j;
      j += e.len;
    }
    const size_t end = (j < n && last > i) ? last : j;
    out.emplace_back(text.data() + start, end - start);
    i = end;
  }
}

// Llama-3's pattern (Hugging Face Split pre-tokenizer of Meta's tokenizer.json):
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// (?i: is taken as ASCII case folding: U+017F ſ and U+212A K, which Unicode folding adds, are not contractions.)
void llama3_pretokenize(std::string_view text, std::vector<std::string_view>& out) {
  const auto* p = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  auto is_nl = [](uint32_t cp) { return cp == '\r' || cp == '\n'; };
  size_t i = 0;
  while (i < n) {
    const Ch c = peek(p, n, i);
    const size_t start = i;
    if (c.cp == '\'' && i + 1 < n) {
      const char a = static_cast<char>(p[i + 1] | 0x20);
      size_t len = 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        len = 2;
      } else if (i + 2 < n) {
        const char b = static_cast<char>(p[i + 2] | 0x20);
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) len = 3;
      }
      if (len) {
        out.emplace_back(text.data() + start, len);
        i += len;
        continue;
      }
    }
    auto run = [&](size_t j, Cls cls) {
      while (j < n) {
        const Ch e = peek(p, n, j);
        if (e.cls != cls) break;
        j += e.len;
      }
      return j;
    };
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (c.cls == kLetter) {
      i = run(i + c.len, kLetter);
      out.emplace_back(text.data() + start, i - start);
      continue;
    }
    const Ch d = i + c.len < n ? peek(p, n, i + c.len) : Ch{0xFFFFFFFFu, 0, kOther};
    const bool has_next = i + c.len < n;
    if (c.cls != kNumber && !is_nl(c.cp) && has_next && d.cls == kLetter) {
      i = run(i + c.len + d.len, kLetter);
      out.emplace_back(text.data() + start, i - start);
      continue;
    }
    // \p{N}{1,3}
    if (c.cls == kNumber) {
      size_t j = i + c.len;
      for (int k = 1; k < 3 && j < n; ++k) {
        const Ch e = peek(p, n, j);
        if (e.cls != kNumber) break;
        j += e.len;
      }
      out.emplace_back(text.data() + start, j - start);
      i = j;
      continue;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    if (c.cls == kOther || (c.cp == ' ' && has_next && d.cls == kOther)) {
      size_t j = run(c.cls == kOther ? i + c.len : i + c.len + d.len, kOther);
      while (j < n && (p[j] == '\r' || p[j] == '\n')) ++j;
      out.emplace_back(text.data() + start, j - start);
      i = j;
      continue;
    }
    // c is whitespace. \s*[\r\n]+ : through the run's last newline; else \s+(?!\S) | \s+ as in GPT-2's pattern.
    size_t last = i, last_nl = is_nl(c.cp) ? i : n;
    size_t j = i + c.len;
    while (j < n) {
      const Ch e = peek(p, n, j);
      if (e.cls != kSpace) break;
      last = j;
      if (is_nl(e.cp)) last_nl = j;
      j += e.len;
    }
    size_t end;
    if (last_nl != n)
      end = last_nl + 1;
    else
      end = (j < n && last > i) ? last : j;
    out.emplace_back(text.data() + start, end - start);
    i = end;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Cache

const std::vector<int32_t>* EncodeCache::find(std::string_view piece) const {
  auto it = map_.find(piece);
  return it == map_.end() ? nullptr : &it->second;
}

void EncodeCache::insert(std::string_view piece, const std::vector<int32_t>& ids) {
  if (map_.size() >= max_entries_) map_.clear();
  map_.emplace(std::string(piece), ids);
}

// ---------------------------------------------------------------------------------------------------------------
// BPE

namespace {
constexpr uint64_t kNoMerge = std::numeric_limits<uint64_t>::max();
inline uint64_t pair_key(int32_t a, int32_t b) {
  return static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32 | static_cast<uint32_t>(b);
}
}  // namespace

Tokenizer::Tokenizer(std::vector<std::string> tokens, const std::vector<std::pair<std::string, std::string>>& merges,
                     std::vector<int32_t> specials, std::string name)
    : tokens_(std::move(tokens)), name_(std::move(name)) {
  std::unordered_map<std::string, int32_t> ids;
  ids.reserve(tokens_.size());
  std::vector<bool> special(tokens_.size(), false);
  for (int32_t s : specials) {
    AQ_CHECK(s >= 0 && static_cast<size_t>(s) < tokens_.size(), name_, ": special token id ", s,
             " is outside the vocabulary (", tokens_.size(), " ids)");
    special[static_cast<size_t>(s)] = true;
  }
  for (size_t id = 0; id < tokens_.size(); ++id) {
    if (tokens_[id].empty() || special[id]) continue;
    ids.emplace(tokens_[id], static_cast<int32_t>(id));  // the first id wins for a duplicate string
  }
  for (int b = 0; b < 256; ++b) {
    auto it = ids.find(std::string(1, static_cast<char>(b)));
    AQ_CHECK(it != ids.end(), name_, ": the vocabulary has no token for byte 0x", std::hex, b,
             "; a byte-level BPE vocabulary needs all 256 single-byte tokens");
    byte_id_[b] = it->second;
  }
  merges_.reserve(merges.size() * 2);
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [a, b] = merges[r];
    auto ia = ids.find(a), ib = ids.find(b), im = ids.find(a + b);
    AQ_CHECK(ia != ids.end() && ib != ids.end() && im != ids.end(), name_, ": merge #", r + 1,
             " joins tokens (or makes one) missing from the vocabulary; the vocabulary and merges do not belong "
             "together");
    // Duplicate merges keep their first (lowest) rank.
    merges_.emplace(pair_key(ia->second, ib->second),
                    static_cast<uint64_t>(r) << 32 | static_cast<uint32_t>(im->second));
  }
  // The heap algorithm for long pre-tokens equals encoder.py's passes when every merge ranks after the merges that
  // made its two parts (true of BPE training's output): then no pair made by a merge can jump ahead of it.
  std::vector<uint64_t> made_at(tokens_.size(), 0);  // rank + 1 of the merge that first makes a token; 0 = a byte
  for (const auto& [key, val] : merges_) {
    uint64_t& m = made_at[val & 0xFFFFFFFFu];
    const uint64_t r = (val >> 32) + 1;
    if (m == 0 || r < m) m = r;
  }
  for (int b = 0; b < 256; ++b) made_at[static_cast<size_t>(byte_id_[b])] = 0;
  for (const auto& [key, val] : merges_) {
    const uint64_t r = (val >> 32) + 1;
    if (made_at[key >> 32] >= r || made_at[key & 0xFFFFFFFFu] >= r) ranks_ordered_ = false;
  }
  token_ids_ = std::move(ids);
  for (const char* eot : {"<|endoftext|>", "<|end_of_text|>", "</s>"}) {
    for (int32_t s : specials)
      if (eot_id_ < 0 && tokens_[static_cast<size_t>(s)] == eot) eot_id_ = s;
  }
}

// encoder.py's passes: O(n) per merge applied; fine for the short pieces that are nearly all of any text.
void Tokenizer::bpe(std::string_view piece, std::vector<int32_t>& word) const {
  word.clear();
  for (unsigned char ch : piece) word.push_back(byte_id_[ch]);
  if (word.size() > kLongPiece && ranks_ordered_) return bpe_heap(word);
  while (word.size() > 1) {
    uint64_t best = kNoMerge;
    int32_t left = 0, right = 0;
    for (size_t k = 0; k + 1 < word.size(); ++k) {
      auto it = merges_.find(pair_key(word[k], word[k + 1]));
      if (it != merges_.end() && it->second < best) {
        best = it->second;
        left = word[k];
        right = word[k + 1];
      }
    }
    if (best == kNoMerge) break;
    // Every occurrence of the chosen pair, left to right, as encoder.py does.
    const auto merged = static_cast<int32_t>(best & 0xFFFFFFFFu);
    size_t w = 0;
    for (size_t k = 0; k < word.size(); ++k) {
      if (k + 1 < word.size() && word[k] == left && word[k + 1] == right) {
        word[w++] = merged;
        ++k;
      } else {
        word[w++] = word[k];
      }
    }
    word.resize(w);
  }
}

// Long pieces (a run of thousands of letters or spaces): the same merges in O(n log n). Candidate pairs sit in a
// heap ordered by (rank, position), so all occurrences of the lowest-ranked pair are merged left to right before
// any later rank, as in encoder.py's passes; entries made stale by a merge are skipped when popped.
void Tokenizer::bpe_heap(std::vector<int32_t>& word) const {
  const auto n = static_cast<int32_t>(word.size());
  std::vector<int32_t> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  for (int32_t k = 0; k < n; ++k) {
    prev[static_cast<size_t>(k)] = k - 1;
    next[static_cast<size_t>(k)] = k + 1 < n ? k + 1 : -1;
  }
  struct Cand {
    uint64_t rank_merged;  // rank << 32 | merged id
    int32_t pos, left, right;
    bool operator>(const Cand& o) const {
      return (rank_merged >> 32) != (o.rank_merged >> 32) ? rank_merged > o.rank_merged : pos > o.pos;
    }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](int32_t pos) {
    if (pos < 0) return;
    const int32_t nx = next[static_cast<size_t>(pos)];
    if (nx < 0) return;
    auto it = merges_.find(pair_key(word[static_cast<size_t>(pos)], word[static_cast<size_t>(nx)]));
    if (it != merges_.end())
      heap.push({it->second, pos, word[static_cast<size_t>(pos)], word[static_cast<size_t>(nx)]});
  };
  for (int32_t k = 0; k + 1 < n; ++k) push(k);
  std::vector<bool> dead(static_cast<size_t>(n), false);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const auto p = static_cast<size_t>(c.pos);
    if (dead[p] || word[p] != c.left) continue;
    const int32_t nx = next[p];
    if (nx < 0 || word[static_cast<size_t>(nx)] != c.right) continue;
    word[p] = static_cast<int32_t>(c.rank_merged & 0xFFFFFFFFu);
    dead[static_cast<size_t>(nx)] = true;
    next[p] = next[static_cast<size_t>(nx)];
    if (next[p] >= 0) prev[static_cast<size_t>(next[p])] = c.pos;
    push(prev[p]);
    push(c.pos);
  }
  size_t w = 0;
  for (int32_t k = 0; k >= 0 && k < n; k = next[static_cast<size_t>(k)]) word[w++] = word[static_cast<size_t>(k)];
  word.resize(w);
}

void Tokenizer::encode(std::string_view text, std::vector<int32_t>& out, EncodeCache& cache) const {
  std::vector<std::string_view> pieces;
  std::vector<int32_t> word;
  // Pre-tokenise in blocks so a large text does not hold all its views at once. A block ends between an ASCII
  // letter and a newline: no pre-token spans that point (a letter run stops before "\n", and a scan that starts
  // at "\n" looks at nothing before it).
  constexpr size_t kBlock = 1 << 20;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.size();
    if (end - pos > kBlock) {
      size_t k = pos + kBlock;
      while (k < text.size() && !(text[k] == '\n' && ((text[k - 1] | 0x20) >= 'a' && (text[k - 1] | 0x20) <= 'z'))) ++k;
      end = k;
    }
    pieces.clear();
    if (pattern_ == Pattern::kLlama3)
      llama3_pretokenize(text.substr(pos, end - pos), pieces);
    else
      gpt2_pretokenize(text.substr(pos, end - pos), pieces);
    for (std::string_view piece : pieces) {
      if (const std::vector<int32_t>* hit = cache.find(piece)) {
        out.insert(out.end(), hit->begin(), hit->end());
        continue;
      }
      const auto whole = ignore_merges_ ? token_ids_.find(std::string(piece)) : token_ids_.end();
      if (whole != token_ids_.end())
        word.assign(1, whole->second);
      else
        bpe(piece, word);
      if (piece.size() <= 256) cache.insert(piece, word);
      out.insert(out.end(), word.begin(), word.end());
    }
    pos = end;
  }
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  EncodeCache cache;
  std::vector<int32_t> out;
  encode(text, out, cache);
  return out;
}

std::string Tokenizer::decode(const int32_t* ids, size_t n) const {
  std::string s;
  for (size_t k = 0; k < n; ++k) {
    AQ_CHECK(ids[k] >= 0 && ids[k] < vocab_size(), name_, ": cannot decode token id ", ids[k],
             ": the vocabulary has ids 0..", vocab_size() - 1);
    s += tokens_[static_cast<size_t>(ids[k])];
  }
  return s;
}

// ---------------------------------------------------------------------------------------------------------------
// GPT-2's byte alphabet

uint32_t gpt2_byte_to_codepoint(uint8_t b) {
  static const auto table = [] {
    std::vector<uint32_t> t(256, 0);
    uint32_t next = 256;
    for (int c = 0; c < 256; ++c) {
      const bool printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
      t[static_cast<size_t>(c)] = printable ? static_cast<uint32_t>(c) : next++;
    }
    return t;
  }();
  return table[b];
}

bool gpt2_unmap(std::string_view mapped, std::string& bytes) {
  static const auto inverse = [] {
    std::vector<int> inv(512, -1);
    for (int b = 0; b < 256; ++b) inv[gpt2_byte_to_codepoint(static_cast<uint8_t>(b))] = b;
    return inv;
  }();
  bytes.clear();
  const auto* p = reinterpret_cast<const uint8_t*>(mapped.data());
  for (size_t i = 0; i < mapped.size();) {
    const Ch c = peek(p, mapped.size(), i);
    if (c.cp >= 512 || inverse[c.cp] < 0) return false;
    bytes.push_back(static_cast<char>(inverse[c.cp]));
    i += c.len;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------------------------
// Loaders

namespace {

std::string read_text(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  AQ_CHECK(in.good(), "cannot read ", what, " ", path,
           " (GPT-2's files: scripts/fetch_gpt2_vocab.sh puts encoder.json and vocab.bpe in data/gpt2-vocab)");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string unmap_or_fail(const std::string& mapped, const std::string& file, const char* what) {
  std::string bytes;
  AQ_CHECK(gpt2_unmap(mapped, bytes), file, ": ", what, " '", mapped,
           "' has a character outside GPT-2's byte alphabet; this is not a byte-level BPE vocabulary");
  return bytes;
}

// Builds the id -> bytes table from a {mapped string: id} JSON object.
std::vector<std::string> vocab_table(const nlohmann::json& vocab, const std::string& file,
                                     std::vector<std::pair<std::string, int32_t>>& raw) {
  int64_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    AQ_CHECK(it.value().is_number_integer(), file, ": vocabulary entry '", it.key(), "' has a non-integer id");
    const int64_t id = it.value().get<int64_t>();
    AQ_CHECK(id >= 0 && id < (1 << 24), file, ": vocabulary entry '", it.key(), "' has id ", id,
             " outside 0..16777215");
    max_id = std::max(max_id, id);
    raw.emplace_back(it.key(), static_cast<int32_t>(id));
  }
  return std::vector<std::string>(static_cast<size_t>(max_id + 1));
}

}  // namespace

Tokenizer Tokenizer::load_gpt2(const std::string& dir) {
  const std::string enc_path = dir + "/encoder.json", bpe_path = dir + "/vocab.bpe";
  nlohmann::json enc;
  try {
    enc = nlohmann::json::parse(read_text(enc_path, "GPT-2 vocabulary"));
  } catch (const nlohmann::json::exception& e) {
    fail(str(enc_path, ": not valid JSON (", e.what(), "); fetch it again with scripts/fetch_gpt2_vocab.sh"));
  }
  AQ_CHECK(enc.is_object(), enc_path, ": expected a JSON object {token: id}");
  std::vector<std::pair<std::string, int32_t>> raw;
  std::vector<std::string> tokens = vocab_table(enc, enc_path, raw);
  std::vector<int32_t> specials;
  for (auto& [mapped, id] : raw) {
    tokens[static_cast<size_t>(id)] = unmap_or_fail(mapped, enc_path, "token");
    if (mapped == "<|endoftext|>") specials.push_back(id);
  }
  const std::string text = read_text(bpe_path, "GPT-2 merges");
  std::vector<std::pair<std::string, std::string>> merges;
  size_t pos = text.find('\n');  // the first line is a version comment
  AQ_CHECK(pos != std::string::npos && text.rfind("#version", 0) == 0, bpe_path,
           ": expected a first line '#version: ...' (OpenAI's vocab.bpe)");
  for (++pos; pos < text.size();) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    AQ_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < line.size(), bpe_path, ": merge line ", merges.size() + 2,
             " ('", line, "') is not two tokens separated by a space");
    merges.emplace_back(unmap_or_fail(line.substr(0, sp), bpe_path, "merge"),
                        unmap_or_fail(line.substr(sp + 1), bpe_path, "merge"));
  }
  return Tokenizer(std::move(tokens), merges, std::move(specials), "gpt2 (" + dir + ")");
}

Tokenizer Tokenizer::load_hf_json(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text(path, "tokenizer file"));
  } catch (const nlohmann::json::exception& e) {
    fail(str(path, ": not valid JSON (", e.what(), ")"));
  }
  // The checks below name each field whose type is wrong; this catches a mistyped field they do not foresee, so
  // any file gives one aq::Error line rather than a JSON library exception (found by tests/fuzz).
  try {
    return load_hf_json(path, j);
  } catch (const nlohmann::json::exception& e) {
    fail(str(path, ": a field of the tokenizer file has an unexpected JSON type (", e.what(),
             "); is it a Hugging Face tokenizer.json?"));
  }
}

Tokenizer Tokenizer::load_hf_json(const std::string& path, nlohmann::json& j) {
  // A boolean option: absent means `fallback`; present, it must be true or false.
  auto flag = [&](const nlohmann::json& o, const char* key, bool fallback, const char* where) {
    if (!o.is_object() || !o.contains(key) || o[key].is_null()) return fallback;
    AQ_CHECK(o[key].is_boolean(), path, ": \"", key, "\" of the ", where, " must be true or false (got ", o[key].dump(),
             ")");
    return o[key].get<bool>();
  };
  auto kind = [](const nlohmann::json& o) -> std::string {
    if (o.is_null()) return "none";
    if (o.is_object() && o.contains("type") && o["type"].is_string()) return o["type"].get<std::string>();
    return "an untyped entry";
  };
  const char* want =
      "; only byte-level BPE tokenizers (model BPE, ByteLevel pre-tokenizer and decoder, GPT-2's "
      "or Llama-3's pattern) are supported";
  AQ_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(), path,
           ": not a Hugging Face tokenizer.json (no \"model\" object)");
  const nlohmann::json& model = j["model"];
  const std::string mtype = model.contains("type") ? kind(model) : (model.contains("merges") ? "BPE" : "unknown");
  AQ_CHECK(mtype == "BPE", path, ": the tokenizer's model is ", mtype, want);
  const nlohmann::json pre = j.value("pre_tokenizer", nlohmann::json());
  std::string pre_desc = kind(pre);
  if (pre_desc == "Sequence" && pre.contains("pretokenizers")) {
    AQ_CHECK(pre["pretokenizers"].is_array(), path, ": the Sequence pre-tokenizer's \"pretokenizers\" is not a list");
    pre_desc = "Sequence of";
    for (const auto& p : pre["pretokenizers"]) pre_desc += " " + kind(p);
  }
  // GPT-2: ByteLevel with its own regex. Llama-3: Sequence [Split with Llama-3's pattern, ByteLevel without regex].
  static const std::string kLlama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const std::string kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  Pattern pattern = Pattern::kGpt2;
  nlohmann::json byte_level = pre;
  if (pre_desc == "Sequence of Split ByteLevel") {
    const nlohmann::json& split = pre["pretokenizers"][0];
    std::string regex;
    if (split.contains("pattern") && split["pattern"].is_object() && split["pattern"].contains("Regex")) {
      AQ_CHECK(split["pattern"]["Regex"].is_string(), path,
               ": the Split pre-tokenizer's pattern Regex is not a string");
      regex = split["pattern"]["Regex"].get<std::string>();
    }
    AQ_CHECK(regex == kLlama3 || regex == kGpt2, path, ": the Split pre-tokenizer's pattern '", regex,
             "' is neither GPT-2's nor Llama-3's", want);
    AQ_CHECK(!split.contains("behavior") || split["behavior"].is_string(), path,
             ": the Split pre-tokenizer's \"behavior\" is not a string");
    AQ_CHECK(split.value("behavior", std::string("Isolated")) == "Isolated" &&
                 !flag(split, "invert", false, "Split pre-tokenizer"),
             path, ": the Split pre-tokenizer is not behavior Isolated without invert", want);
    pattern = regex == kLlama3 ? Pattern::kLlama3 : Pattern::kGpt2;
    byte_level = pre["pretokenizers"][1];
    AQ_CHECK(!flag(byte_level, "use_regex", true, "ByteLevel pre-tokenizer"), path,
             ": the ByteLevel pre-tokenizer after a Split has use_regex true (two patterns in a row)", want);
  } else {
    AQ_CHECK(kind(pre) == "ByteLevel", path, ": the tokenizer's pre-tokenizer is ", pre_desc,
             " (not ByteLevel, nor Split with GPT-2's or Llama-3's pattern then ByteLevel)", want);
    AQ_CHECK(flag(pre, "use_regex", true, "ByteLevel pre-tokenizer"), path,
             ": the ByteLevel pre-tokenizer has use_regex false", want);
  }
  AQ_CHECK(!flag(byte_level, "add_prefix_space", false, "ByteLevel pre-tokenizer"), path,
           ": the ByteLevel pre-tokenizer has add_prefix_space true, which is not supported (decode would not "
           "give back the text)");
  const nlohmann::json norm = j.value("normalizer", nlohmann::json());
  AQ_CHECK(norm.is_null(), path, ": the tokenizer has a ", kind(norm), " normalizer", want);
  const nlohmann::json dec = j.value("decoder", nlohmann::json());
  AQ_CHECK(dec.is_null() || kind(dec) == "ByteLevel", path, ": the tokenizer's decoder is ", kind(dec), want);
  AQ_CHECK(!flag(model, "byte_fallback", false, "BPE model"), path,
           ": the BPE model uses byte_fallback (SentencePiece style)", want);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const bool unset = !model.contains(key) || model[key].is_null() ||
                       (model[key].is_string() && model[key].get<std::string>().empty());
    AQ_CHECK(unset, path, ": the BPE model sets ", key, want);
  }
  AQ_CHECK(model.contains("vocab") && model["vocab"].is_object(), path, ": the BPE model has no \"vocab\" object");
  std::vector<std::pair<std::string, int32_t>> raw;
  std::vector<std::string> tokens = vocab_table(model["vocab"], path, raw);
  for (auto& [mapped, id] : raw) tokens[static_cast<size_t>(id)] = unmap_or_fail(mapped, path, "token");
  std::vector<int32_t> specials;
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const auto& t : j["added_tokens"]) {
      AQ_CHECK(t.is_object() && t.contains("id") && t.contains("content"), path,
               ": an added token lacks \"id\" or \"content\"");
      AQ_CHECK(t["id"].is_number_integer() && t["content"].is_string(), path, ": added token ", t.dump(),
               " needs an integer \"id\" and a string \"content\"");
      const int64_t id = t["id"].get<int64_t>();
      AQ_CHECK(id >= 0 && id < (1 << 24), path, ": added token id ", id, " outside 0..16777215");
      if (static_cast<size_t>(id) >= tokens.size()) tokens.resize(static_cast<size_t>(id) + 1);
      tokens[static_cast<size_t>(id)] = t["content"].get<std::string>();  // added tokens are plain text
      specials.push_back(static_cast<int32_t>(id));
    }
  }
  AQ_CHECK(model.contains("merges") && model["merges"].is_array(), path, ": the BPE model has no \"merges\" list");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(model["merges"].size());
  for (const auto& m : model["merges"]) {
    std::string a, b;
    if (m.is_string()) {
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      AQ_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < s.size() && s.find(' ', sp + 1) == std::string::npos, path,
               ": merge #", merges.size() + 1, " ('", s, "') is not two tokens separated by one space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else {
      AQ_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), path, ": merge #",
               merges.size() + 1, " is neither \"a b\" nor [\"a\", \"b\"]");
      a = m[0].get<std::string>();
      b = m[1].get<std::string>();
    }
    merges.emplace_back(unmap_or_fail(a, path, "merge"), unmap_or_fail(b, path, "merge"));
  }
  Tokenizer tok(std::move(tokens), merges, std::move(specials), path);
  tok.pattern_ = pattern;
  tok.ignore_merges_ = flag(model, "ignore_merges", false, "BPE model");
  return tok;
}

Tokenizer Tokenizer::load(const std::string& spec, const std::string& vocab_dir) {
  if (spec == "gpt2") {
    AQ_CHECK(!vocab_dir.empty(),
             "--tokenizer gpt2 needs --vocab DIR holding encoder.json and vocab.bpe "
             "(scripts/fetch_gpt2_vocab.sh puts them in data/gpt2-vocab)");
    return load_gpt2(vocab_dir);
  }
  AQ_CHECK(spec.size() > 5 && spec.substr(spec.size() - 5) == ".json",
           "--tokenizer must be bytes, gpt2 or a "
           "Hugging Face tokenizer.json file (got '",
           spec, "')");
  return load_hf_json(spec);
}

}  // namespace aq
