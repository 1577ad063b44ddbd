// aq-prepare — turn UTF-8 text files into llm.c-format train/val token shards (byte-level tokenizer, V = 256).
//
//   build/bin/aq-prepare --out data/fortunes /usr/share/games/fortunes/*.u8
// The text is cut into 4 KiB blocks; every k-th block (k = 1/val-fraction) goes to validation, so both splits
// see every source file. Output: OUT/train_000.bin, OUT/train_001.bin, …, OUT/val_000.bin, …
#include <CLI/CLI.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "examples/main_guard.h"
#include "runtime/blas_setup.h"
#include "runtime/data.h"
#include "runtime/file_io.h"
#include "runtime/log.h"

namespace {

void write_split(const std::string& dir, const char* split, const std::vector<uint16_t>& tokens, size_t shard_tokens) {
  size_t n_shards = 0;
  for (size_t start = 0; start < tokens.size() || n_shards == 0; start += shard_tokens, ++n_shards) {
    const size_t end = std::min(tokens.size(), start + shard_tokens);
    char name[32];
    std::snprintf(name, sizeof(name), "%s_%03zu.bin", split, n_shards);
    aq::write_shard(dir + "/" + name, std::vector<uint16_t>(tokens.begin() + static_cast<long>(start),
                                                            tokens.begin() + static_cast<long>(end)));
    if (end == tokens.size()) {
      ++n_shards;
      break;
    }
  }
  aq::log_info(split, ": ", tokens.size(), " tokens in ", n_shards, " shard(s)");
}

}  // namespace

int main(int argc, char** argv) {
  aq::ensure_blas_kernels(argv);  // first: may re-execute this program with the right OpenBLAS kernels
  std::string out;
  std::vector<std::string> inputs;
  double val_fraction = 0.1;
  size_t shard_tokens = 100'000'000;
  CLI::App app{"aq-prepare: UTF-8 text files -> byte-level (V = 256) llm.c-format train/val token shards"};
  app.add_option("--out", out, "Output directory (created if missing)")->required();
  app.add_option("--val-fraction", val_fraction, "Fraction of the text held out for validation")->capture_default_str();
  app.add_option("--shard-tokens", shard_tokens, "Tokens per shard file")->capture_default_str();
  app.add_option("inputs", inputs, "Text files")->required();

  return aq::run_main("aq-prepare", app, argc, argv, [&] {
    AQ_CHECK(val_fraction > 0 && val_fraction < 1, "--val-fraction must be in (0, 1) (got ", val_fraction, ")");
    AQ_CHECK(shard_tokens >= 1024, "--shard-tokens must be >= 1024 (got ", shard_tokens, ")");
    std::error_code ec;
    std::filesystem::create_directories(out, ec);
    AQ_CHECK(!ec, "cannot create --out directory ", out, ": ", ec.message());
    std::string text;
    for (const std::string& f : inputs) {
      std::ifstream in(f, std::ios::binary);
      AQ_CHECK(in.good(), "cannot read input file ", f);
      text.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    AQ_CHECK(!text.empty(), "the input files are empty: nothing to tokenize");
    constexpr size_t kBlock = 4096;
    const size_t every = static_cast<size_t>(std::llround(1.0 / val_fraction));
    std::vector<uint16_t> train, val;
    for (size_t b = 0, start = 0; start < text.size(); ++b, start += kBlock) {
      auto& dst = (b % every == every - 1) ? val : train;
      for (size_t i = start; i < std::min(text.size(), start + kBlock); ++i)
        dst.push_back(static_cast<uint8_t>(text[i]));
    }
    AQ_CHECK(!val.empty(), "the text (", text.size(), " bytes) is too short to hold out a validation split of ",
             val_fraction, "; give more text or raise --val-fraction");
    aq::log_info("read ", inputs.size(), " file(s), ", text.size(), " bytes");
    write_split(out, "train", train, shard_tokens);
    write_split(out, "val", val, shard_tokens);
  });
}
