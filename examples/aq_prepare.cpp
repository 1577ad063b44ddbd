// aq-prepare — turn text files into llm.c-format train/val token shards: bytes (V = 256, the default), GPT-2's
// BPE, or a Hugging Face byte-level BPE tokenizer.json.
//
//   build/bin/aq-prepare --out data/fortunes /usr/share/games/fortunes/*.u8
//   build/bin/aq-prepare --tokenizer gpt2 --vocab data/gpt2-vocab --out data/fortunes-gpt2 /usr/share/games/fortunes/*
// With a BPE tokenizer each input file is a document, preceded by <|endoftext|> (as llm.c's data scripts do), and
// the files are tokenized on --threads threads. The tokens are cut into blocks (4096 bytes, or 1024 BPE tokens);
// every k-th block (k = 1/val-fraction) goes to validation, so both splits see every source file.
// Output: OUT/train_000.bin, OUT/train_001.bin, …, OUT/val_000.bin, …
#include <CLI/CLI.hpp>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "examples/main_guard.h"
#include "runtime/blas_setup.h"
#include "runtime/data.h"
#include "runtime/file_io.h"
#include "runtime/log.h"
#include "runtime/tokenizer.h"

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

std::string read_input(const std::string& f) {
  std::ifstream in(f, std::ios::binary);
  AQ_CHECK(in.good(), "cannot read input file ", f);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Each file a document: <|endoftext|> then its ids. Files are taken by `threads` workers, each with its own cache.
std::vector<uint16_t> tokenize_files(const aq::Tokenizer& tok, const std::vector<std::string>& files, int threads,
                                     size_t& total_bytes) {
  std::vector<std::vector<int32_t>> docs(files.size());
  std::vector<std::string> errors(files.size());
  std::vector<size_t> sizes(files.size(), 0);
  std::atomic<size_t> next{0};
  auto work = [&] {
    aq::EncodeCache cache;
    for (size_t f; (f = next++) < files.size();) {
      try {
        const std::string text = read_input(files[f]);
        sizes[f] = text.size();
        docs[f].push_back(tok.eot_id());
        tok.encode(text, docs[f], cache);
      } catch (const std::exception& e) {
        errors[f] = e.what();
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(work);
  for (auto& t : pool) t.join();
  std::vector<uint16_t> tokens;
  total_bytes = 0;
  for (size_t f = 0; f < files.size(); ++f) {
    AQ_CHECK(errors[f].empty(), errors[f]);
    total_bytes += sizes[f];
    tokens.insert(tokens.end(), docs[f].begin(), docs[f].end());  // every id < 65536: checked by the caller
  }
  return tokens;
}

}  // namespace

int main(int argc, char** argv) {
  aq::ensure_blas_kernels(argv);  // first: may re-execute this program with the right OpenBLAS kernels
  std::string out;
  std::vector<std::string> inputs;
  double val_fraction = 0.1;
  size_t shard_tokens = 100'000'000;
  std::string tokenizer = "bytes", vocab;
  int threads = 0;
  CLI::App app{"aq-prepare: text files -> llm.c-format train/val token shards (bytes, GPT-2 BPE, tokenizer.json)"};
  app.add_option("--tokenizer", tokenizer, "bytes (V = 256), gpt2 (needs --vocab) or a Hugging Face tokenizer.json")
      ->capture_default_str();
  app.add_option("--vocab", vocab, "Directory with GPT-2's encoder.json and vocab.bpe (scripts/fetch_gpt2_vocab.sh)");
  app.add_option("--threads", threads, "Tokenizer threads (0 = all cores)")->capture_default_str();
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
    AQ_CHECK(threads >= 0, "--threads must be >= 0 (got ", threads, ")");
    const bool bytes = tokenizer == "bytes";
    std::vector<uint16_t> all;
    size_t total_bytes = 0;
    if (bytes) {
      for (const std::string& f : inputs) {
        const std::string text = read_input(f);
        all.insert(all.end(), text.begin(), text.end());  // char -> uint16_t via the unsigned byte below
      }
      for (size_t i = 0; i < all.size(); ++i) all[i] &= 0xFF;
      total_bytes = all.size();
    } else {
      const aq::Tokenizer tok = aq::Tokenizer::load(tokenizer, vocab);
      AQ_CHECK(tok.vocab_size() <= 65536, tokenizer, " has ", tok.vocab_size(),
               " ids; llm.c shards hold uint16 tokens (ids < 65536); use a smaller vocabulary");
      AQ_CHECK(tok.eot_id() >= 0, tokenizer,
               " has no <|endoftext|>, <|end_of_text|> or </s> special token to put "
               "between documents");
      const int n = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
      all = tokenize_files(tok, inputs, std::min<int>(n, static_cast<int>(inputs.size())), total_bytes);
      aq::log_info("tokenizer ", tok.name(), ": ", all.size(), " tokens (", inputs.size(), " documents, ",
                   static_cast<double>(total_bytes) / static_cast<double>(all.size()), " bytes/token)");
    }
    AQ_CHECK(total_bytes > 0, "the input files are empty: nothing to tokenize");
    const size_t kBlock = bytes ? 4096 : 1024;
    const size_t every = static_cast<size_t>(std::llround(1.0 / val_fraction));
    std::vector<uint16_t> train, val;
    for (size_t b = 0, start = 0; start < all.size(); ++b, start += kBlock) {
      auto& dst = (b % every == every - 1) ? val : train;
      dst.insert(dst.end(), all.begin() + static_cast<long>(start),
                 all.begin() + static_cast<long>(std::min(all.size(), start + kBlock)));
    }
    AQ_CHECK(!val.empty(), "the text (", total_bytes, " bytes, ", all.size(),
             " tokens) is too short to hold out a validation split of ", val_fraction,
             "; give more text or raise --val-fraction");
    aq::log_info("read ", inputs.size(), " file(s), ", total_bytes, " bytes");
    write_split(out, "train", train, shard_tokens);
    write_split(out, "val", val, shard_tokens);
  });
}
