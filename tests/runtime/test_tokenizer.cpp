// test_tokenizer.cpp — byte-level BPE against expected ids derived by hand from a small vocabulary built here:
// GPT-2's pre-tokenisation (contractions, letters, digits, punctuation, whitespace runs, CJK, emoji, invalid
// UTF-8), merges by rank (every occurrence of the lowest-ranked pair, left to right), round trips of random
// bytes, the GPT-2 byte alphabet, and tokenizer.json loading/refusal. The GPT-2 files' own check against a second
// implementation is tests/runtime/tokenizer_gpt2.sh.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>

#include "runtime/error.h"
#include "runtime/tokenizer.h"

namespace {

using Ids = std::vector<int32_t>;

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string_view> v;
  aq::gpt2_pretokenize(s, v);
  return std::vector<std::string>(v.begin(), v.end());
}

using P = std::vector<std::string>;

TEST(TokenizerPretokenize, WordsAndSpaces) {
  EXPECT_EQ(split("Hello world"), (P{"Hello", " world"}));
  EXPECT_EQ(split("a   b"), (P{"a", "  ", " b"}));
  EXPECT_EQ(split("a\n\nb"), (P{"a", "\n", "\n", "b"}));
  EXPECT_EQ(split("x  "), (P{"x", "  "}));
  EXPECT_EQ(split("  \n  x"), (P{"  \n ", " x"}));
  EXPECT_EQ(split(" \tx"), (P{" ", "\t", "x"}));
  EXPECT_EQ(split(" "), (P{" "}));
  EXPECT_EQ(split(""), (P{}));
  EXPECT_EQ(split(std::string(1000, ' ') + "a"), (P{std::string(999, ' '), " a"}));
  EXPECT_EQ(split("a\xe3\x80\x80"
                  "b"),
            (P{"a", "\xe3\x80\x80", "b"}));  // U+3000 ideographic space
  EXPECT_EQ(split("a\xc2\xa0"
                  "b"),
            (P{"a", "\xc2\xa0", "b"}));  // U+00A0 no-break space
}

TEST(TokenizerPretokenize, Contractions) {
  EXPECT_EQ(split("I'm don't we'll they've you're he'd it's"),
            (P{"I", "'m", " don", "'t", " we", "'ll", " they", "'ve", " you", "'re", " he", "'d", " it", "'s"}));
  EXPECT_EQ(split("'S"), (P{"'", "S"}));  // case-sensitive
  EXPECT_EQ(split("x'y"), (P{"x", "'", "y"}));
  EXPECT_EQ(split("''s"), (P{"''", "s"}));  // the punctuation run takes both apostrophes
  EXPECT_EQ(split("'sand"), (P{"'s", "and"}));
  EXPECT_EQ(split("don't!"), (P{"don", "'t", "!"}));
}

TEST(TokenizerPretokenize, DigitsPunctuationUnicode) {
  EXPECT_EQ(split("123 4567 abc123"), (P{"123", " 4567", " abc", "123"}));
  EXPECT_EQ(split("Hi!!! ok?"), (P{"Hi", "!!!", " ok", "?"}));
  EXPECT_EQ(split("x = f(y);"), (P{"x", " =", " f", "(", "y", ");"}));
  EXPECT_EQ(split("\xe4\xbd\xa0\xe5\xa5\xbd \xe4\xb8\x96\xe7\x95\x8c"),  // 你好 世界: letters (Lo)
            (P{"\xe4\xbd\xa0\xe5\xa5\xbd", " \xe4\xb8\x96\xe7\x95\x8c"}));
  EXPECT_EQ(split("\xc2\xbd"
                  "3"),
            (P{"\xc2\xbd"
               "3"}));                                      // ½ is No: one number run
  EXPECT_EQ(split("hi \xf0\x9f\x91\x8b\xf0\x9f\x8f\xbd!"),  // 👋🏽! : symbols
            (P{"hi", " \xf0\x9f\x91\x8b\xf0\x9f\x8f\xbd!"}));
  EXPECT_EQ(split("caf\xc3\xa9s"), (P{"caf\xc3\xa9s"}));  // é is a letter
}

TEST(TokenizerPretokenize, InvalidUtf8IsPunctuation) {
  EXPECT_EQ(split("a\xff\xfe"
                  "b"),
            (P{"a", "\xff\xfe", "b"}));
  EXPECT_EQ(split(" \xff"), (P{" \xff"}));
  EXPECT_EQ(split("a\xe4\xbd"), (P{"a", "\xe4\xbd"}));  // truncated sequence at the end
  EXPECT_EQ(split("\xc0\xaf"
                  "x"),
            (P{"\xc0\xaf", "x"}));  // overlong '/'
  EXPECT_EQ(split("\xed\xa0\x80"
                  "x"),
            (P{"\xed\xa0\x80", "x"}));  // a surrogate
  EXPECT_EQ(split("!\x80"), (P{"!\x80"}));
}

// Bytes 0..255 are ids 0..255; merges in rank order give ids 256, 257, ...; <|endoftext|> is special.
aq::Tokenizer small_tokenizer() {
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(b));
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"l", "l"},            // 256 ll
      {"h", "e"},            // 257 he
      {"he", "ll"},          // 258 hell
      {"hell", "o"},         // 259 hello
      {" ", "w"},            // 260 " w"
      {"a", "a"},            // 261 aa
      {"aa", "a"},           // 262 aaa
      {"aa", "aa"},          // 263 aaaa
      {" ", " "},            // 264 "  "
      {"1", "2"},            // 265 12
      {"\xe4\xbd", "\xa0"},  // 266 你 (3 bytes) once its first two bytes are joined...
      {"\xe4", "\xbd"},      // 267 ...which ranks later
  };
  for (const auto& [a, b] : merges) tokens.push_back(a + b);
  tokens.push_back("<|endoftext|>");
  const int32_t eot = static_cast<int32_t>(tokens.size()) - 1;
  return aq::Tokenizer(tokens, merges, {eot}, "small test vocabulary");
}

TEST(TokenizerBpe, MergesByRank) {
  const aq::Tokenizer tok = small_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 269);
  EXPECT_EQ(tok.eot_id(), 268);
  EXPECT_EQ(tok.encode("hello"), (Ids{259}));
  EXPECT_EQ(tok.encode("hello world"), (Ids{259, 260, 'o', 'r', 'l', 'd'}));
  EXPECT_EQ(tok.encode("hell"), (Ids{258}));
  EXPECT_EQ(tok.encode("hel"), (Ids{257, 'l'}));
  EXPECT_EQ(tok.encode("ell"), (Ids{'e', 256}));
  EXPECT_EQ(tok.encode("Hello"), (Ids{'H', 'e', 256, 'o'}));
  // aaaa: (a,a) has the lowest rank, both occurrences merge in one pass, then (aa,aa).
  EXPECT_EQ(tok.encode("aaaa"), (Ids{263}));
  EXPECT_EQ(tok.encode("aaa"), (Ids{262}));
  EXPECT_EQ(tok.encode("aaaaa"), (Ids{261, 262}));  // [aa, aa, a]: (aa,a) ranks before (aa,aa)
  EXPECT_EQ(tok.encode("aaaaaaaa"), (Ids{263, 263}));
  EXPECT_EQ(tok.encode(std::string(1000, 'a')), Ids(250, 263));  // long pieces take the heap path
  Ids odd(249, 263);
  odd.push_back(261);
  odd.push_back(262);
  EXPECT_EQ(tok.encode(std::string(1001, 'a')), odd);  // 500 aa + a; (aa,a) at the end; (aa,aa) from the left
  // Whitespace runs: "    w" is "   " + " w"; "   " is [ "  ", " " ].
  EXPECT_EQ(tok.encode("    w"), (Ids{264, ' ', 260}));
  EXPECT_EQ(tok.encode("x\n\ny"), (Ids{'x', '\n', '\n', 'y'}));
  EXPECT_EQ(tok.encode("12 123"), (Ids{265, ' ', 265, '3'}));  // " 123": no (" ", "1") merge, then (1, 2)
  // 你 = e4 bd a0: (e4 bd a0) cannot merge until (e4, bd) has: rank 11 then rank 10.
  EXPECT_EQ(tok.encode("\xe4\xbd\xa0"), (Ids{266}));
  EXPECT_EQ(tok.encode("\xe4\xbd"), (Ids{267}));
  // Special text is ordinary text.
  EXPECT_EQ(tok.encode("<|endoftext|>").size(), 13u);
  EXPECT_EQ(tok.decode(Ids{268}), "<|endoftext|>");
  // Invalid bytes keep their own ids.
  EXPECT_EQ(tok.encode("a\xff\xfe"), (Ids{'a', 0xff, 0xfe}));
}

// encoder.py's bpe() on strings, written independently of the library: the reference for pieces of any length
// (the library merges pieces above 64 bytes with a heap instead of passes).
std::vector<std::string> reference_bpe(const std::string& piece,
                                       const std::vector<std::pair<std::string, std::string>>& merges) {
  std::vector<std::string> word;
  for (char c : piece) word.emplace_back(1, c);
  while (word.size() > 1) {
    size_t best = merges.size();
    for (size_t k = 0; k + 1 < word.size(); ++k)
      for (size_t r = 0; r < best; ++r)
        if (merges[r].first == word[k] && merges[r].second == word[k + 1]) best = r;
    if (best == merges.size()) break;
    std::vector<std::string> out;
    for (size_t k = 0; k < word.size(); ++k) {
      if (k + 1 < word.size() && word[k] == merges[best].first && word[k + 1] == merges[best].second) {
        out.push_back(word[k] + word[k + 1]);
        ++k;
      } else {
        out.push_back(word[k]);
      }
    }
    word = out;
  }
  return word;
}

TEST(TokenizerBpe, LongPiecesMatchTheReference) {
  // Letters only: each string is one pre-token. Merges chain so long runs build deep tokens.
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"a", "b"}, {"b", "a"},   {"ab", "a"}, {"a", "a"}, {"ab", "ab"},     {"aa", "b"},   {"ba", "ba"}, {"abab", "ab"},
      {"c", "a"}, {"aa", "aa"}, {"ca", "b"}, {"b", "b"}, {"abab", "abab"}, {"cab", "ab"}, {"bb", "a"}};
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.emplace_back(1, static_cast<char>(b));
  for (const auto& [a, b] : merges) tokens.push_back(a + b);
  const aq::Tokenizer tok(tokens, merges, {}, "chained test vocabulary");
  EXPECT_EQ(tok.encode(std::string(1000, 'a')), Ids(250, 256 + 9));  // (a,a) everywhere, then (aa,aa)
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  for (int trial = 0; trial < 60; ++trial) {
    const size_t len = 1 + rng() % 700;
    std::string s;
    for (size_t k = 0; k < len; ++k) s.push_back("abc"[rng() % (trial % 3 == 0 ? 2 : 3)]);
    std::vector<std::string> got;
    for (int32_t id : tok.encode(s)) got.push_back(tok.token_bytes(id));
    ASSERT_EQ(got, reference_bpe(s, merges)) << "seed " << seed << " length " << len;
  }
}

TEST(TokenizerBpe, RoundTripRandomBytes) {
  const aq::Tokenizer tok = small_tokenizer();
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  const char* pieces[] = {"hello",        " world",           "aaa",  "  ",   "\n", "'s", "'ll",          "12",
                          "\xe4\xbd\xa0", "\xf0\x9f\x91\x8b", "\xff", "\xc3", "!",  "\t", "\xe3\x80\x80", "x"};
  aq::EncodeCache cache(64);  // small: exercises the clearing
  for (int trial = 0; trial < 300; ++trial) {
    std::string s;
    const int len = static_cast<int>(rng() % 200);
    for (int k = 0; k < len; ++k) {
      if (rng() % 3 == 0)
        s.push_back(static_cast<char>(rng() & 0xff));
      else
        s += pieces[rng() % (sizeof(pieces) / sizeof(pieces[0]))];
    }
    std::vector<int32_t> ids;
    tok.encode(s, ids, cache);
    ASSERT_EQ(tok.decode(ids), s) << "seed " << seed << " trial " << trial;
    ASSERT_EQ(ids, tok.encode(s)) << "cached and uncached encodes differ; seed " << seed;
    std::vector<std::string_view> v;
    aq::gpt2_pretokenize(s, v);
    std::string joined;
    for (auto p : v) {
      ASSERT_FALSE(p.empty());
      joined += p;
    }
    ASSERT_EQ(joined, s);
  }
}

TEST(TokenizerBpe, LargeTextBlocksAgree) {
  // encode() pre-tokenises in 1 MiB blocks: the ids must not depend on where a block ends.
  const aq::Tokenizer tok = small_tokenizer();
  std::string s;
  std::mt19937 rng(7);
  const char* words[] = {"hello", "aaaa", "word", "\n", "\n\n", "  ", " ", "'s", "12"};
  while (s.size() < (3u << 20)) s += words[rng() % 9];
  std::vector<std::string_view> v;
  aq::gpt2_pretokenize(s, v);
  std::vector<int32_t> expect;
  for (auto p : v) {
    const Ids ids = tok.encode(p);  // each piece alone is below the block size
    expect.insert(expect.end(), ids.begin(), ids.end());
  }
  EXPECT_EQ(tok.encode(s), expect);
}

TEST(TokenizerGpt2Alphabet, BytesToUnicode) {
  EXPECT_EQ(aq::gpt2_byte_to_codepoint('!'), 33u);
  EXPECT_EQ(aq::gpt2_byte_to_codepoint(' '), 256u + 32u);  // Ġ
  EXPECT_EQ(aq::gpt2_byte_to_codepoint(0), 256u);
  EXPECT_EQ(aq::gpt2_byte_to_codepoint(0xAD), 323u);  // after 0..32 and 127..160
  std::string bytes;
  ASSERT_TRUE(aq::gpt2_unmap("\xc4\xa0the", bytes));  // "Ġthe"
  EXPECT_EQ(bytes, " the");
  EXPECT_FALSE(aq::gpt2_unmap("\xe4\xbd\xa0", bytes));
}

std::string write_tmp(const std::string& name, const std::string& content) {
  const std::string path = (std::filesystem::temp_directory_path() / name).string();
  std::ofstream(path) << content;
  return path;
}

// A tokenizer.json of the GPT-2 kind with the small vocabulary: tokens in GPT-2's byte alphabet.
std::string hf_json(const std::string& model_extra, const std::string& pre, bool pair_merges) {
  auto mapped = [](const std::string& bytes) {
    std::string s;
    for (unsigned char b : bytes) {
      const uint32_t cp = aq::gpt2_byte_to_codepoint(b);
      if (cp < 0x80) {
        if (cp == '"' || cp == '\\') s.push_back('\\');
        s.push_back(static_cast<char>(cp));
      } else {
        s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
    }
    return s;
  };
  std::string vocab = "{";
  auto entry = [&](const std::string& bytes, int id) {  // appended piecewise: GCC 12 warns on a + chain here
    vocab += '"';
    vocab += mapped(bytes);
    vocab += "\": ";
    vocab += std::to_string(id);
    vocab += ", ";
  };
  for (int b = 0; b < 256; ++b) entry(std::string(1, static_cast<char>(b)), b);
  entry("he", 256);
  entry(" w", 257);
  vocab += "\"abc\": 259}";
  const std::string merges = pair_merges ? R"([["h", "e"], ["Ġ", "w"]])" : R"(["h e", "Ġ w"])";
  return R"({"version": "1.0", "normalizer": null, "pre_tokenizer": )" + pre +
         R"(, "decoder": {"type": "ByteLevel"}, "added_tokens": [{"id": 258, "content": "<|endoftext|>", "special": true}],
            "model": {"type": "BPE", "vocab": )" +
         vocab + ", \"merges\": " + merges + model_extra + "}}";
}

TEST(TokenizerHfJson, LoadsByteLevelBpe) {
  const std::string pre = R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})";
  for (bool pairs : {false, true}) {
    const std::string path = write_tmp("aq_tok_ok.json", hf_json("", pre, pairs));
    const aq::Tokenizer tok = aq::Tokenizer::load("" + path, "");
    EXPECT_EQ(tok.encode("hello world"), (Ids{256, 'l', 'l', 'o', 257, 'o', 'r', 'l', 'd'}));
    EXPECT_EQ(tok.eot_id(), 258);
    EXPECT_EQ(tok.decode(Ids{258}), "<|endoftext|>");
    std::remove(path.c_str());
  }
}

void expect_refused(const std::string& json, const std::string& words) {
  const std::string path = write_tmp("aq_tok_bad.json", json);
  try {
    aq::Tokenizer::load_hf_json(path);
    ADD_FAILURE() << "accepted: " << words;
  } catch (const aq::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(words), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
  }
  std::remove(path.c_str());
}

TEST(TokenizerHfJson, LoadsLlama3Style) {
  // Sequence [Split with Llama-3's pattern, ByteLevel without regex], and ignore_merges: "abc" is a token no merge
  // makes, taken whole only with ignore_merges.
  const std::string pre = R"({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex":
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
      "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}]})";
  for (bool ignore : {false, true}) {
    const std::string path =
        write_tmp("aq_tok_llama3.json", hf_json(ignore ? ", \"ignore_merges\": true" : "", pre, false));
    const aq::Tokenizer tok = aq::Tokenizer::load(path, "");
    EXPECT_EQ(tok.encode("abc"), ignore ? (Ids{259}) : (Ids{'a', 'b', 'c'}));
    EXPECT_EQ(tok.encode("he said 12345"), (Ids{256, ' ', 's', 'a', 'i', 'd', ' ', '1', '2', '3', '4', '5'}));
    std::remove(path.c_str());
  }
}

TEST(TokenizerPretokenize, Llama3Pattern) {
  auto split3 = [](const std::string& s) {
    std::vector<std::string_view> v;
    aq::llama3_pretokenize(s, v);
    return P(v.begin(), v.end());
  };
  EXPECT_EQ(split3("Hello world"), (P{"Hello", " world"}));
  EXPECT_EQ(split3("I'M DON'T we'll"), (P{"I", "'M", " DON", "'T", " we", "'ll"}));
  EXPECT_EQ(split3("12345 678"), (P{"123", "45", " ", "678"}));
  EXPECT_EQ(split3("(word \tword\nword"), (P{"(word", " ", "\tword", "\n", "word"}));
  EXPECT_EQ(split3("a\n\n  b"), (P{"a", "\n\n", " ", " b"}));
  EXPECT_EQ(split3("x!!\n\ny"), (P{"x", "!!\n\n", "y"}));
  EXPECT_EQ(split3("a  \r\n  b"), (P{"a", "  \r\n", " ", " b"}));
  EXPECT_EQ(split3(" !x"), (P{" !", "x"}));
  EXPECT_EQ(split3("!x"), (P{"!x"}));
  EXPECT_EQ(split3("x  "), (P{"x", "  "}));
  EXPECT_EQ(split3("\xff\xfe"
                   "ab"),
            (P{"\xff\xfe", "ab"}));  // invalid bytes are punctuation
  EXPECT_EQ(split3("\xff"
                   "ab"),
            (P{"\xff"
               "ab"}));  // one prefixes a letter run
}

TEST(TokenizerHfJson, RefusesOtherKinds) {
  const std::string pre = R"({"type": "ByteLevel", "add_prefix_space": false})";
  expect_refused(R"({"model": {"type": "WordPiece", "vocab": {}}})", "model is WordPiece");
  expect_refused(R"({"model": {"type": "Unigram", "vocab": []}})", "model is Unigram");
  expect_refused(hf_json("", R"({"type": "Metaspace"})", false), "pre-tokenizer is Metaspace");
  expect_refused(
      hf_json("", R"({"type": "Sequence", "pretokenizers": [{"type": "Digits"}, {"type": "ByteLevel"}]})", false),
      "pre-tokenizer is Sequence of Digits ByteLevel");
  expect_refused(hf_json("", R"({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\w+"}},
                                 {"type": "ByteLevel", "use_regex": false}]})",
                         false),
                 "pattern '\\w+' is neither GPT-2's nor Llama-3's");
  expect_refused(hf_json(", \"byte_fallback\": true", pre, false), "byte_fallback");
  expect_refused("not json", "not valid JSON");
}

// Fields of the wrong JSON type (found by tests/fuzz/fuzz_tokenizer_json): one aq::Error naming the field, not a
// JSON library exception.
TEST(TokenizerHfJson, RefusesMistypedFields) {
  expect_refused(hf_json("", R"({"type": "ByteLevel", "use_regex": "yes"})", false),
                 "\"use_regex\" of the ByteLevel pre-tokenizer must be true or false (got \"yes\")");
  expect_refused(hf_json(", \"ignore_merges\": 1", R"({"type": "ByteLevel"})", false),
                 "\"ignore_merges\" of the BPE model must be true or false");
  expect_refused(
      hf_json("", R"({"type": "Sequence", "pretokenizers": {"a": {"type": "Split"}, "b": {"type": "ByteLevel"}}})",
              false),
      "\"pretokenizers\" is not a list");
  expect_refused(hf_json("", R"({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": 7}},
                                 {"type": "ByteLevel", "use_regex": false}]})",
                         false),
                 "pattern Regex is not a string");
  expect_refused(R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"},
                     "added_tokens": [{"id": "x", "content": "a"}]})",
                 "needs an integer \"id\" and a string \"content\"");
  expect_refused(R"({"model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": {"type": "ByteLevel"},
                     "added_tokens": [7]})",
                 "an added token lacks \"id\" or \"content\"");
}

}  // namespace
