#include "runtime/data.h"

#include <glob.h>

#include <algorithm>
#include <cstring>

#include "runtime/error.h"

namespace aq {

Shard::Shard(const std::string& path, int vocab_size) : file_(path) {
  const size_t header_bytes = 4 * kShardHeaderWords;
  AQ_CHECK(file_.size() >= header_bytes, path, ": truncated token shard: ", file_.size(),
           " bytes, smaller than the ", header_bytes, "-byte header");
  int32_t header[3];
  std::memcpy(header, file_.data(), sizeof(header));
  AQ_CHECK(header[0] == kShardMagic, path, ": not a token shard: magic number is ", header[0], ", expected ",
           kShardMagic, " (llm.c format; create shards with aq-prepare)");
  AQ_CHECK(header[1] == kShardVersion, path, ": unsupported shard version ", header[1], " (expected ",
           kShardVersion, ": uint16 tokens)");
  AQ_CHECK(header[2] >= 0, path, ": corrupt shard header: negative token count ", header[2]);
  num_tokens_ = static_cast<size_t>(header[2]);
  const size_t expect = header_bytes + 2 * num_tokens_;
  AQ_CHECK(file_.size() == expect, path, ": truncated or damaged shard: header says ", num_tokens_,
           " tokens (", expect, " bytes) but the file has ", file_.size(), " bytes");
  const uint16_t* tok = tokens();
  for (size_t i = 0; i < num_tokens_; ++i) {
    if (tok[i] >= vocab_size)
      fail(str(path, ": token ", tok[i], " at token index ", i, " (byte offset ", header_bytes + 2 * i,
               ") is out of range for vocabulary size ", vocab_size,
               " (shards made for a larger vocabulary? check --vocab / the checkpoint)"));
  }
}

void write_shard(const std::string& path, const std::vector<uint16_t>& tokens) {
  AQ_CHECK(tokens.size() <= 0x7fffffffu, "shard ", path, " would hold ", tokens.size(),
           " tokens; at most 2^31-1 fit in one shard");
  int32_t header[kShardHeaderWords] = {0};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<int32_t>(tokens.size());
  AtomicWriter out(path);
  out.write(header, sizeof(header));
  out.write(tokens.data(), tokens.size() * sizeof(uint16_t));
  out.commit();
}

std::vector<std::string> expand_glob(const std::string& pattern, const char* what) {
  AQ_CHECK(!pattern.empty(), what, " is empty: give a shard file or a glob such as data/train_*.bin");
  glob_t g{};
  int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
  std::vector<std::string> files;
  if (rc == 0)
    for (size_t i = 0; i < g.gl_pathc; ++i) files.emplace_back(g.gl_pathv[i]);
  ::globfree(&g);
  AQ_CHECK(!files.empty(), what, " ", pattern, ": no such file (prepare shards with aq-prepare, or check the glob)");
  std::sort(files.begin(), files.end());
  return files;
}

DataLoader::DataLoader(const std::string& pattern, int B, int T, int vocab_size, int rank, int num_ranks,
                       const char* what)
    : B_(B), T_(T), rank_(rank), num_ranks_(num_ranks), first_seqs_(static_cast<int64_t>(rank) * B),
      count_seqs_(B), global_seqs_(static_cast<int64_t>(num_ranks) * B) {
  const size_t need = static_cast<size_t>(num_ranks) * B * T + 1;
  bool any_fits = false;
  for (const std::string& f : expand_glob(pattern, what)) {
    shards_.push_back(std::make_unique<Shard>(f, vocab_size));
    any_fits |= shards_.back()->num_tokens() >= need;
  }
  if (!any_fits) {
    const Shard& s = *shards_.front();
    fail(str(what, ": shard ", s.path(), " has ", s.num_tokens(), " tokens; one ",
             num_ranks > 1 ? "global " : "", "batch needs ", num_ranks > 1 ? "ranks·" : "", "B·T+1 = ", need,
             " (B=", B, ", T=", T, num_ranks > 1 ? str(", ranks=", num_ranks) : "",
             "); lower --batch or --seq, or use more data"));
  }
  reset();
}

size_t DataLoader::total_tokens() const {
  size_t n = 0;
  for (const auto& s : shards_) n += s->num_tokens();
  return n;
}

void DataLoader::reset() {
  pos_ = LoaderPosition{};
  skip_to_usable();
}

void DataLoader::skip_to_usable() {
  // The windows of all ranks must fit, so every rank changes shard on the same step. At least one shard fits
  // (checked in the constructor).
  for (size_t tries = 0; tries <= shards_.size(); ++tries) {
    if (pos_.position + global_window() <= static_cast<int64_t>(shards_[pos_.shard]->num_tokens())) return;
    pos_.shard = (pos_.shard + 1) % static_cast<int64_t>(shards_.size());
    pos_.position = 0;
  }
  AQ_ASSERT(false, "no shard fits a window although one was checked to");
}

void DataLoader::set_position(LoaderPosition p) {
  AQ_CHECK(p.shard >= 0 && p.shard < static_cast<int64_t>(shards_.size()) && p.position >= 0 &&
               p.position + global_window() <= static_cast<int64_t>(shards_[p.shard]->num_tokens()),
           "saved data position (shard ", p.shard, ", token ", p.position, ") with a global step of ",
           global_window(), " tokens does not fit the current data files (", shards_.size(),
           " shards): resume with the same --data, --batch, --seq, --grad-accum and --balance as the saved run");
  pos_ = p;
}

void DataLoader::next(int32_t* inputs, int32_t* targets) {
  const uint16_t* tok = shards_[pos_.shard]->tokens() + pos_.position + first_seqs_ * T_;
  const int64_t n = count_seqs_ * T_;
  for (int64_t i = 0; i < n; ++i) {
    inputs[i] = tok[i];
    targets[i] = tok[i + 1];
  }
  pos_.position += global_seqs_ * T_;
  skip_to_usable();
}

void DataLoader::set_split(int64_t first_seqs, int64_t count_seqs, int64_t global_seqs) {
  AQ_ASSERT(first_seqs >= 0 && count_seqs >= 1 && first_seqs + count_seqs <= global_seqs, "split [", first_seqs, ", +",
            count_seqs, ") of ", global_seqs, " sequences");
  size_t largest = 0;
  for (const auto& sh : shards_) largest = std::max(largest, sh->num_tokens());
  AQ_CHECK(static_cast<int64_t>(largest) >= global_seqs * T_ + 1, "--data: the largest shard has ", largest,
           " tokens; a global step of ", global_seqs, " sequences needs ", global_seqs * T_ + 1,
           "; lower --batch or --grad-accum, or use more data");
  first_seqs_ = first_seqs;
  count_seqs_ = count_seqs;
  global_seqs_ = global_seqs;
  skip_to_usable();
}

}  // namespace aq
