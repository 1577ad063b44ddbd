// aq-prepare — turn text files into llm.c-format train/val token shards: bytes (V = 256, the default), GPT-2's
// BPE, or a Hugging Face byte-level BPE tokenizer.json.
//
//   build/bin/aq-prepare --out data/fortunes /usr/share/games/fortunes/*.u8
//   build/bin/aq-prepare --tokenizer gpt2 --vocab data/gpt2-vocab --out data/fortunes-gpt2 /usr/share/games/fortunes/*
// With a BPE tokenizer each input file is a document, preceded by <|endoftext|> (as llm.c's data scripts do), and
// the files are tokenized on --threads threads. The tokens are cut into blocks (4096 bytes, or 1024 BPE tokens);
// every k-th block (k = 1/val-fraction) goes to validation, so both splits see every source file.
// Output: OUT/train_000.bin, OUT/train_001.bin, …, OUT/val_000.bin, …
//
// Guards: an input that is a directory, or that looks binary (a NUL byte, or more than a quarter of the bytes
// not valid UTF-8, in its first 64 KiB), is refused in one line naming the file and the byte offset
// (--allow-binary takes such files as they are). Shards of an earlier run in OUT (train_NNN.bin, val_NNN.bin,
// and temporaries of a killed run) are removed, with one line saying how many, once the new text has been read:
// a glob such as OUT/train_*.bin would otherwise mix them into the new data. They are removed rather than
// refused behind an --overwrite flag because shards are derived data, rebuilt from the inputs by running the
// same command, and re-preparing into the same OUT is the common case (unlike a checkpoint, nothing is lost).
#include <CLI/CLI.hpp>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
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

// Refuses text that looks binary: a NUL byte, or more than a quarter of the bytes outside valid UTF-8 sequences,
// in the first 64 KiB (Latin-1 prose stays far below a quarter; executables, archives and images hold NULs or
// are mostly invalid UTF-8).
void check_text(const std::string& f, const std::string& text) {
  const size_t n = std::min<size_t>(text.size(), 64 * 1024);
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  size_t invalid = 0, first_invalid = n;
  for (size_t i = 0; i < n;) {
    const unsigned char b = p[i];
    AQ_CHECK(b != 0, "input file ", f, " looks binary: a NUL byte at byte offset ", i,
             "; give text files, or pass --allow-binary to tokenize it anyway");
    size_t len = b < 0x80                   ? 1
                 : (b >= 0xC2 && b <= 0xDF) ? 2
                 : (b >= 0xE0 && b <= 0xEF) ? 3
                 : (b >= 0xF0 && b <= 0xF4) ? 4
                                            : 0;
    for (size_t k = 1; k < len; ++k)
      if (i + k >= n || (p[i + k] & 0xC0) != 0x80) len = 0;  // a sequence cut by the 64 KiB window counts too
    if (len == 0) {
      first_invalid = std::min(first_invalid, i);
      ++invalid;
      ++i;
    } else {
      i += len;
    }
  }
  AQ_CHECK(invalid * 4 <= n, "input file ", f, " looks binary: ", invalid, " of its first ", n,
           " bytes are not valid UTF-8 (the first at byte offset ", first_invalid,
           "); give text files, or pass --allow-binary to tokenize it anyway");
}

std::string read_input(const std::string& f, bool allow_binary) {
  std::error_code ec;
  AQ_CHECK(!std::filesystem::is_directory(f, ec), "input ", f, " is a directory; give the text files in it, e.g. ", f,
           "/*.txt (aq-prepare does not recurse)");
  std::ifstream in(f, std::ios::binary);
  AQ_CHECK(in.good(), "cannot read input file ", f);
  std::string text(std::istreambuf_iterator<char>(in), (std::istreambuf_iterator<char>()));
  AQ_CHECK(!in.bad(), "cannot read input file ", f, ": read error");
  if (!allow_binary) check_text(f, text);
  return text;
}

// Removes the shards an earlier run left in `dir` (names as write_split makes them, and their atomic-write
// temporaries) so that OUT/train_*.bin holds this run's shards only. Returns how many were removed.
size_t remove_stale_shards(const std::string& dir) {
  static const std::regex shard_name(R"((train|val)_[0-9]{3,}\.bin(\.tmp\.[0-9]+)?)");
  std::vector<std::filesystem::path> stale;  // collected first: removing while iterating is unspecified
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file() && std::regex_match(e.path().filename().string(), shard_name)) stale.push_back(e.path());
  for (const auto& path : stale) {
    std::error_code ec;
    std::filesystem::remove(path, ec);
    AQ_CHECK(!ec, "cannot remove the earlier shard ", path.string(), ": ", ec.message(),
             " (remove it by hand or choose another --out)");
  }
  return stale.size();
}

// Each file a document: <|endoftext|> then its ids. Files are taken by `threads` workers, each with its own cache.
std::vector<uint16_t> tokenize_files(const aq::Tokenizer& tok, const std::vector<std::string>& files, int threads,
                                     bool allow_binary, size_t& total_bytes) {
  std::vector<std::vector<int32_t>> docs(files.size());
  std::vector<std::string> errors(files.size());
  std::vector<size_t> sizes(files.size(), 0);
  std::atomic<size_t> next{0};
  auto work = [&] {
    aq::EncodeCache cache;
    for (size_t f; (f = next++) < files.size();) {
      try {
        const std::string text = read_input(files[f], allow_binary);
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
  bool allow_binary = false;
  CLI::App app{"aq-prepare: text files -> llm.c-format train/val token shards (bytes, GPT-2 BPE, tokenizer.json)"};
  app.add_option("--tokenizer", tokenizer, "bytes (V = 256), gpt2 (needs --vocab) or a Hugging Face tokenizer.json")
      ->capture_default_str();
  app.add_option("--vocab", vocab, "Directory with GPT-2's encoder.json and vocab.bpe (scripts/fetch_gpt2_vocab.sh)");
  app.add_option("--threads", threads, "Tokenizer threads (0 = all cores)")->capture_default_str();
  app.add_option("--out", out, "Output directory (created if missing)")->required();
  app.add_option("--val-fraction", val_fraction, "Fraction of the text held out for validation")->capture_default_str();
  app.add_option("--shard-tokens", shard_tokens, "Tokens per shard file")->capture_default_str();
  app.add_flag("--allow-binary", allow_binary,
               "Tokenize inputs that look binary (a NUL byte, or over 25% invalid UTF-8 in the first 64 KiB)");
  app.add_option("inputs", inputs, "Text files (not directories)")->required();

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
        const std::string text = read_input(f, allow_binary);
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
      all = tokenize_files(tok, inputs, std::min<int>(n, static_cast<int>(inputs.size())), allow_binary, total_bytes);
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
    if (const size_t stale = remove_stale_shards(out))
      aq::log_info("removed ", stale, " shard file(s) of an earlier run from ", out);
    write_split(out, "train", train, shard_tokens);
    write_split(out, "val", val, shard_tokens);
  });
}
