// tokenizer_vocab.h — a small byte-level BPE vocabulary for the tokenizer harnesses, as a tokenizer.json text.
//
// 256 byte tokens, a few dozen merges of English and digits (including merges whose parts are themselves
// merged tokens, and, in the Llama-3 variant, one pair of merges out of training order so the encoder's passes and heap
// paths both run), and <|endoftext|> as an added token. `llama3` gives the Split(Llama-3 pattern) + ByteLevel
// pre-tokenizer and ignore_merges, otherwise GPT-2's ByteLevel.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "runtime/tokenizer.h"

namespace aq::fuzz {

// Merges as byte strings, in rank order. `out_of_order` (the Llama-3 variant) appends a merge whose right part is
// made by a later merge: the encoder then keeps to its passes (no heap), so each variant covers one path.
inline const std::vector<std::pair<std::string, std::string>>& small_merges(bool out_of_order) {
  static const std::vector<std::pair<std::string, std::string>> ordered = {
      {"t", "h"},   {"th", "e"},      {" ", "t"}, {" ", "the"}, {"i", "n"},  {"in", "g"}, {"e", "r"},
      {"a", "n"},   {"o", "n"},       {"r", "e"}, {" ", "a"},   {" a", "n"}, {"e", "n"},  {"a", "a"},
      {"aa", "aa"}, {"aaaa", "aaaa"}, {" ", " "}, {"  ", "  "}, {"0", "0"},  {"1", "2"},  {"12", "3"},
      {"\n", "\n"}, {"\xc3", "\xa9"}, {"'", "s"}, {"o", "u"},   {"ou", "t"}, {" ", "b"},  {" b", "e"},
  };
  static const std::vector<std::pair<std::string, std::string>> unordered = [] {
    auto m = ordered;
    m.insert(m.end(), {{"x", "yz"}, {"y", "z"}});
    return m;
  }();
  return out_of_order ? unordered : ordered;
}

inline std::string json_escape_mapped(const std::string& bytes) {
  // Bytes -> GPT-2's printable alphabet (UTF-8 of each byte's code point); those are all JSON-safe except '"', '\\'.
  std::string out;
  for (unsigned char b : bytes) {
    const uint32_t cp = gpt2_byte_to_codepoint(b);
    if (cp == '"' || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  return out;
}

inline std::string small_tokenizer_json(bool llama3) {
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(b));
  const auto& merge_list = small_merges(llama3);
  for (const auto& [a, b] : merge_list) tokens.push_back(a + b);
  std::string vocab;
  for (size_t id = 0; id < tokens.size(); ++id)
    vocab += (id ? ",\"" : "\"") + json_escape_mapped(tokens[id]) + "\":" + std::to_string(id);
  std::string merges;
  for (size_t r = 0; r < merge_list.size(); ++r)
    merges += (r ? ",\"" : "\"") + json_escape_mapped(merge_list[r].first) + " " +
              json_escape_mapped(merge_list[r].second) + "\"";
  const std::string pre =
      llama3
          ? R"({"type":"Sequence","pretokenizers":[{"type":"Split","pattern":{"Regex":"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},"behavior":"Isolated","invert":false},{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}]})"
          : R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})";
  return std::string(R"({"version":"1.0","added_tokens":[{"id":)") + std::to_string(tokens.size()) +
         R"(,"content":"<|endoftext|>","special":true}],"normalizer":null,"pre_tokenizer":)" + pre +
         R"(,"decoder":{"type":"ByteLevel"},"model":{"type":"BPE","ignore_merges":)" + (llama3 ? "true" : "false") +
         R"(,"vocab":{)" + vocab + R"(},"merges":[)" + merges + "]}}";
}

}  // namespace aq::fuzz
