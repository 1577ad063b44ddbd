// fuzz_tokenizer_roundtrip.cpp — encode/decode of the byte-level BPE tokenizer on arbitrary bytes.
//
// Two tokenizers over the small vocabulary of tokenizer_vocab.h (GPT-2's pattern; Llama-3's with ignore_merges),
// loaded once. For each input, checked against the tokenizer's contract (tokenizer.h):
//   * both pre-tokenizers cover the text exactly, in order, with no empty piece;
//   * decode(encode(x)) == x, every id inside the vocabulary and none a special token;
//   * each pre-token's tokens equal an independent reference BPE (encoder.py's passes over byte strings), which
//     checks the heap path used for pieces above 64 bytes;
//   * a cache shared across inputs gives the same ids as a fresh one.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/error.h"
#include "runtime/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/fuzz/tokenizer_vocab.h"

namespace {

// encoder.py's bpe() over byte strings: merge the lowest-ranked adjacent pair, every occurrence left to right.
std::vector<std::string> reference_bpe(std::string_view piece,
                                       const std::map<std::pair<std::string, std::string>, size_t>& rank) {
  std::vector<std::string> word;
  for (char c : piece) word.emplace_back(1, c);
  while (word.size() > 1) {
    size_t best = SIZE_MAX;
    std::pair<std::string, std::string> pair;
    for (size_t k = 0; k + 1 < word.size(); ++k) {
      auto it = rank.find({word[k], word[k + 1]});
      if (it != rank.end() && it->second < best) {
        best = it->second;
        pair = it->first;
      }
    }
    if (best == SIZE_MAX) break;
    std::vector<std::string> next;
    for (size_t k = 0; k < word.size(); ++k) {
      if (k + 1 < word.size() && word[k] == pair.first && word[k + 1] == pair.second) {
        next.push_back(pair.first + pair.second);
        ++k;
      } else {
        next.push_back(word[k]);
      }
    }
    word.swap(next);
  }
  return word;
}

void check(const aq::Tokenizer& tok, bool llama3, std::string_view text, aq::EncodeCache& shared) {
  using Ranks = std::map<std::pair<std::string, std::string>, size_t>;
  auto ranks_of = [](bool out_of_order) {
    Ranks r;
    for (size_t i = 0; i < aq::fuzz::small_merges(out_of_order).size(); ++i)
      r.emplace(aq::fuzz::small_merges(out_of_order)[i], i);
    return r;
  };
  static const Ranks ranks[2] = {ranks_of(false), ranks_of(true)};
  const Ranks& rank = ranks[llama3 ? 1 : 0];
  static const auto whole = [] {
    std::map<std::string, int> w;
    for (int b = 0; b < 256; ++b) w[std::string(1, static_cast<char>(b))] = 1;
    for (const auto& [a, b] : aq::fuzz::small_merges(true)) w[a + b] = 1;
    return w;
  }();
  std::vector<std::string_view> pieces;
  if (llama3)
    aq::llama3_pretokenize(text, pieces);
  else
    aq::gpt2_pretokenize(text, pieces);
  size_t at = 0;
  for (std::string_view p : pieces) {
    if (p.empty() || p.data() != text.data() + at) aq::fuzz::property_failed("pre-tokens do not tile the text");
    at += p.size();
  }
  if (at != text.size()) aq::fuzz::property_failed("pre-tokens do not cover the text");

  const std::vector<int32_t> ids = tok.encode(text);
  for (int32_t id : ids)
    if (id < 0 || id >= tok.vocab_size() || id == tok.eot_id()) aq::fuzz::property_failed("encode: bad id");
  if (tok.decode(ids) != text) aq::fuzz::property_failed("decode(encode(x)) != x");
  std::vector<int32_t> cached;
  tok.encode(text, cached, shared);
  if (cached != ids) aq::fuzz::property_failed("a shared EncodeCache changed the ids");

  size_t k = 0;
  for (std::string_view p : pieces) {
    std::vector<std::string> want;
    if (llama3 && whole.count(std::string(p)))
      want.emplace_back(p);  // ignore_merges: a pre-token that is a token is taken whole
    else
      want = reference_bpe(p, rank);
    for (const std::string& w : want) {
      if (k >= ids.size() || tok.token_bytes(ids[k]) != w) aq::fuzz::property_failed("BPE differs from the reference");
      ++k;
    }
  }
  if (k != ids.size()) aq::fuzz::property_failed("more ids than the reference BPE gives");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static aq::fuzz::MemFile file("fuzz_tokenizer_roundtrip.json");
  static const aq::Tokenizer gpt2 = aq::Tokenizer::load_hf_json(
      file.set(aq::fuzz::small_tokenizer_json(false).data(), aq::fuzz::small_tokenizer_json(false).size()));
  static const aq::Tokenizer llama3 = aq::Tokenizer::load_hf_json(
      file.set(aq::fuzz::small_tokenizer_json(true).data(), aq::fuzz::small_tokenizer_json(true).size()));
  static aq::EncodeCache cache_gpt2(4096), cache_llama3(4096);
  if (size > (1u << 16)) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check(gpt2, false, text, cache_gpt2);
  check(llama3, true, text, cache_llama3);
  return 0;
}
