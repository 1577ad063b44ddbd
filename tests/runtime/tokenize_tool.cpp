// tokenize_tool — test helper: prints the ids of each file (one line per file), checks decode(encode(x)) == x, or
// measures single-thread encode speed.
//
//   tokenize_tool SPEC VOCAB_DIR ids FILE...     SPEC: gpt2 or a tokenizer.json; one line of ids per file
//   tokenize_tool SPEC VOCAB_DIR bench FILE      prints "encode: X MB/s ..." (cold cache, then warm)
//   tokenize_tool - - llama3-pieces FILE...      byte lengths of Llama-3's pre-tokens, one line per file
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "runtime/error.h"
#include "runtime/tokenizer.h"

namespace {
std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  AQ_CHECK(in.good(), "cannot read ", path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: tokenize_tool SPEC VOCAB_DIR ids|bench FILE...\n");
    return 2;
  }
  try {
    if (std::string(argv[3]) == "llama3-pieces") {
      for (int f = 4; f < argc; ++f) {
        std::vector<std::string_view> pieces;
        aq::llama3_pretokenize(read_file(argv[f]), pieces);
        std::string line;
        for (size_t k = 0; k < pieces.size(); ++k) {
          if (k) line += ' ';
          line += std::to_string(pieces[k].size());
        }
        std::printf("%s\n", line.c_str());
      }
      return 0;
    }
    const aq::Tokenizer tok = aq::Tokenizer::load(argv[1], argv[2]);
    const std::string mode = argv[3];
    if (mode == "ids") {
      for (int f = 4; f < argc; ++f) {
        const std::string text = read_file(argv[f]);
        const std::vector<int32_t> ids = tok.encode(text);
        AQ_CHECK(tok.decode(ids) == text, argv[f], ": decode(encode(x)) != x");
        std::string line;
        for (size_t k = 0; k < ids.size(); ++k) {
          if (k) line += ' ';
          line += std::to_string(ids[k]);
        }
        std::printf("%s\n", line.c_str());
      }
    } else if (mode == "bench") {
      const std::string text = read_file(argv[4]);
      aq::EncodeCache cache;
      for (const char* pass : {"cold cache", "warm cache"}) {
        std::vector<int32_t> ids;
        ids.reserve(text.size() / 3);
        const auto t0 = std::chrono::steady_clock::now();
        tok.encode(text, ids, cache);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("encode (%s, 1 thread): %.2f MB in %.3f s = %.1f MB/s, %zu tokens (%.2f bytes/token)\n", pass,
                    static_cast<double>(text.size()) / 1e6, s, static_cast<double>(text.size()) / 1e6 / s, ids.size(),
                    static_cast<double>(text.size()) / static_cast<double>(ids.size()));
      }
    } else {
      AQ_CHECK(false, "unknown mode '", mode, "' (ids or bench)");
    }
  } catch (const aq::Error& e) {
    std::fprintf(stderr, "tokenize_tool: %s\n", e.what());
    return 1;
  }
  return 0;
}
