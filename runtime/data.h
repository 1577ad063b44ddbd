// data.h — token shards in the llm.c format, and the batch loader.
//
// Shard file: 256 little-endian int32 header words — [0] magic 20240520, [1] version 1, [2] token count —
// then `count` uint16 tokens. Datasets prepared for llm.c work unchanged.
//
// Loader order (llm.c's): a process with rank r of R starts at token r·B·T of the first shard (sorted glob) and
// each step advances by R·B·T. A step takes the B·T+1 tokens at its position: inputs are the first B·T, targets
// the same shifted by one. When the next step's windows (R·B·T+1 tokens from rank 0's position) would run past
// the end of a shard, all ranks move to the start of the next shard, wrapping to the first after the last. So
// R ranks with batch B read exactly what one process with batch R·B reads. Every shard is validated when opened (magic,
// version, size against the header count, every token < vocab), so a bad file fails before training starts.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/file_io.h"

namespace aq {

constexpr int32_t kShardMagic = 20240520;
constexpr int32_t kShardVersion = 1;
constexpr size_t kShardHeaderWords = 256;

class Shard {
 public:
  Shard(const std::string& path, int vocab_size);  // validates; throws aq::Error naming file and offset
  const std::string& path() const { return file_.path(); }
  size_t num_tokens() const { return num_tokens_; }
  const uint16_t* tokens() const { return reinterpret_cast<const uint16_t*>(file_.data() + 4 * kShardHeaderWords); }

 private:
  MappedFile file_;
  size_t num_tokens_ = 0;
};

// Writes a shard atomically.
void write_shard(const std::string& path, const std::vector<uint16_t>& tokens);

// Expands a glob pattern into a sorted list of files; fails with one line when nothing matches.
std::vector<std::string> expand_glob(const std::string& pattern, const char* what);

struct LoaderPosition {
  int64_t shard = 0;     // index into the sorted file list
  int64_t position = 0;  // token offset of rank 0's next window in that shard (rank r reads r·B·T further)
};

class DataLoader {
 public:
  // `what` names the data in error messages ("--data", "--val-data").
  DataLoader(const std::string& pattern, int B, int T, int vocab_size, int rank, int num_ranks, const char* what);

  // Fills inputs (B, T) and targets (B, T) and advances.
  void next(int32_t* inputs, int32_t* targets);
  // Uneven split of a global step (work split by speed): the step reads `global_seqs` sequences, this rank the
  // `count_seqs` of them starting at sequence `first_seqs`; next() then fills count_seqs·T values. Every rank
  // must set the same global_seqs. The default is B sequences at rank·B of num_ranks·B. Fails with one line when
  // no shard holds a global step.
  void set_split(int64_t first_seqs, int64_t count_seqs, int64_t global_seqs);
  void reset();
  LoaderPosition position() const { return pos_; }
  void set_position(LoaderPosition p);  // validated against the shard list
  size_t num_shards() const { return shards_.size(); }
  size_t total_tokens() const;

 private:
  void skip_to_usable();  // moves to the next shard where all ranks' windows fit
  int64_t global_window() const { return global_seqs_ * T_ + 1; }
  std::vector<std::unique_ptr<Shard>> shards_;
  int B_, T_, rank_, num_ranks_;
  int64_t first_seqs_, count_seqs_, global_seqs_;  // this rank's part of a global step, in sequences
  LoaderPosition pos_;
};

}  // namespace aq
