// test_data.cpp — token shards and the batch loader: shard round trip and validation (magic, version, size,
// token range, each failure naming the file), loader order with odd B and T, shard changes and wrap-around,
// data-parallel ranks reading exactly what one large batch reads, too-small data, set_position, glob expansion.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "runtime/data.h"
#include "runtime/error.h"
#include "tests/test_util.h"

namespace aq {
namespace {

using test::expect_error;

class Data : public test::TempDirTest {
 protected:

  // A shard file made by hand: the three header words, zero padding to 256 words, then `tokens`.
  std::string write_raw(const std::string& name, int32_t magic, int32_t version, int32_t count,
                        const std::vector<uint16_t>& tokens) {
    std::vector<int32_t> header(kShardHeaderWords, 0);
    header[0] = magic;
    header[1] = version;
    header[2] = count;
    const std::string p = path(name);
    std::ofstream f(p, std::ios::binary);
    f.write(reinterpret_cast<const char*>(header.data()), static_cast<std::streamsize>(4 * header.size()));
    f.write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(2 * tokens.size()));
    return p;
  }

  // Writes a shard whose tokens are first, first+1, …: a token's value tells where it came from.
  std::vector<uint16_t> write_counting(const std::string& name, uint16_t first, size_t n) {
    std::vector<uint16_t> t(n);
    for (size_t i = 0; i < n; ++i) t[i] = static_cast<uint16_t>(first + i);
    write_shard(path(name), t);
    return t;
  }

};

struct Batch {
  std::vector<int32_t> inputs, targets;
};

Batch next_batch(DataLoader& dl, int B, int T) {
  Batch b{std::vector<int32_t>(static_cast<size_t>(B) * T), std::vector<int32_t>(static_cast<size_t>(B) * T)};
  dl.next(b.inputs.data(), b.targets.data());
  return b;
}

// The batch a loader must return when its window starts at `pos` of `tokens`.
Batch window(const std::vector<uint16_t>& tokens, size_t pos, size_t n) {
  Batch b;
  for (size_t i = 0; i < n; ++i) {
    b.inputs.push_back(tokens.at(pos + i));
    b.targets.push_back(tokens.at(pos + i + 1));
  }
  return b;
}

// ---- shards ---------------------------------------------------------------------------------------------------

TEST_F(Data, ShardRoundTrip) {
  std::vector<uint16_t> t = {0, 1, 65534, 300, 7, 7, 42};
  write_shard(path("s.bin"), t);
  EXPECT_EQ(std::filesystem::file_size(path("s.bin")), 4 * kShardHeaderWords + 2 * t.size());
  Shard s(path("s.bin"), 65535);
  EXPECT_EQ(s.path(), path("s.bin"));
  ASSERT_EQ(s.num_tokens(), t.size());
  EXPECT_EQ(std::vector<uint16_t>(s.tokens(), s.tokens() + s.num_tokens()), t);

  write_shard(path("empty.bin"), {});
  EXPECT_EQ(Shard(path("empty.bin"), 256).num_tokens(), 0u);
  // No temporary files are left behind.
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) files += e.path().extension() == ".bin";
  EXPECT_EQ(files, 2u);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_), std::filesystem::directory_iterator()), 2);
}

TEST_F(Data, BadMagic) {
  const std::string p = write_raw("magic.bin", 12345, kShardVersion, 3, {1, 2, 3});
  expect_error([&] { Shard s(p, 256); }, {p, "not a token shard", "magic number is 12345", "20240520"});
}

TEST_F(Data, WrongVersion) {
  const std::string p = write_raw("version.bin", kShardMagic, 2, 3, {1, 2, 3});
  expect_error([&] { Shard s(p, 256); }, {p, "unsupported shard version 2"});
}

TEST_F(Data, TruncatedShard) {
  const std::string p = write_raw("trunc.bin", kShardMagic, kShardVersion, 100, std::vector<uint16_t>(50, 1));
  expect_error([&] { Shard s(p, 256); }, {p, "header says 100 tokens", "1224 bytes", "1124 bytes"});
  // Extra bytes after the tokens are damage too.
  const std::string q = write_raw("long.bin", kShardMagic, kShardVersion, 2, {1, 2, 3});
  expect_error([&] { Shard s(q, 256); }, {q, "header says 2 tokens"});
  const std::string n = write_raw("neg.bin", kShardMagic, kShardVersion, -5, {});
  expect_error([&] { Shard s(n, 256); }, {n, "negative token count -5"});
}

TEST_F(Data, TokenOutOfVocabulary) {
  write_shard(path("v.bin"), {1, 2, 3, 49, 50, 4});
  expect_error([&] { Shard s(path("v.bin"), 50); },
               {path("v.bin"), "token 50 at token index 4", "byte offset 1032", "vocabulary size 50", "--vocab"});
  EXPECT_NO_THROW(Shard(path("v.bin"), 51));
}

TEST_F(Data, FileShorterThanHeader) {
  const std::string p = path("tiny.bin");
  std::ofstream(p, std::ios::binary) << std::string(100, 'x');
  expect_error([&] { Shard s(p, 256); }, {p, "100 bytes", "1024-byte header"});
  const std::string e = path("zero.bin");
  std::ofstream(e, std::ios::binary).flush();
  expect_error([&] { Shard s(e, 256); }, {e, "0 bytes"});
  expect_error([&] { Shard s(path("absent.bin"), 256); }, {"cannot open", path("absent.bin")});
  expect_error([&] { Shard s(dir_, 256); }, {dir_, "not a regular file"});
}

// ---- loader order ---------------------------------------------------------------------------------------------

TEST_F(Data, OrderWithinShardsAcrossShardsAndWrap) {
  const int B = 3, T = 5, BT = B * T;  // a window is 16 tokens
  // Sorted by name: a (100 tokens: 6 windows at 0, 15, …, 75; 90+16 > 100), b (10: too small, skipped),
  // c (40: windows at 0 and 15), d (70: 0, 15, 30, 45).
  const auto a = write_counting("a.bin", 0, 100);
  write_counting("b.bin", 1000, 10);
  const auto c = write_counting("c.bin", 2000, 40);
  const auto d = write_counting("d.bin", 3000, 70);
  DataLoader dl(path("*.bin"), B, T, 65535, 0, 1, "--data");
  EXPECT_EQ(dl.num_shards(), 4u);
  EXPECT_EQ(dl.total_tokens(), 220u);

  struct Want {
    const std::vector<uint16_t>* shard;
    int64_t index;
    size_t pos;
  };
  std::vector<Want> want;
  for (size_t k = 0; k < 6; ++k) want.push_back({&a, 0, k * BT});
  for (size_t k = 0; k < 2; ++k) want.push_back({&c, 2, k * BT});
  for (size_t k = 0; k < 4; ++k) want.push_back({&d, 3, k * BT});
  for (size_t k = 0; k < 3; ++k) want.push_back({&a, 0, k * BT});  // wrapped around
  for (size_t k = 0; k < want.size(); ++k) {
    EXPECT_EQ(dl.position().shard, want[k].index) << "batch " << k;
    EXPECT_EQ(dl.position().position, static_cast<int64_t>(want[k].pos)) << "batch " << k;
    const Batch got = next_batch(dl, B, T);
    const Batch exp = window(*want[k].shard, want[k].pos, BT);
    EXPECT_EQ(got.inputs, exp.inputs) << "batch " << k;
    EXPECT_EQ(got.targets, exp.targets) << "batch " << k;
  }

  dl.reset();
  EXPECT_EQ(dl.position().shard, 0);
  EXPECT_EQ(dl.position().position, 0);
  EXPECT_EQ(next_batch(dl, B, T).inputs, window(a, 0, BT).inputs);
}

TEST_F(Data, FirstShardTooSmallIsSkipped) {
  write_counting("a.bin", 0, 15);  // B·T but not B·T+1
  const auto b = write_counting("b.bin", 100, 16);
  DataLoader dl(path("*.bin"), 3, 5, 65535, 0, 1, "--data");
  for (int k = 0; k < 3; ++k) {
    const Batch got = next_batch(dl, 3, 5);
    EXPECT_EQ(got.inputs, window(b, 0, 15).inputs) << "batch " << k;
    EXPECT_EQ(got.targets, window(b, 0, 15).targets) << "batch " << k;
  }
}

TEST_F(Data, RanksTogetherReadWhatOneLargeBatchReads) {
  const int R = 3, B = 2, T = 5, BT = B * T;         // global window R·B·T+1 = 31
  const auto a = write_counting("a.bin", 0, 100);    // steps at 0, 30, 60 (90+31 > 100)
  write_counting("b.bin", 1000, 30);                 // too small for the global window
  const auto c = write_counting("c.bin", 2000, 64);  // steps at 0, 30
  std::vector<std::unique_ptr<DataLoader>> ranks;
  for (int r = 0; r < R; ++r) ranks.push_back(std::make_unique<DataLoader>(path("*.bin"), B, T, 65535, r, R, "--data"));
  DataLoader big(path("*.bin"), R * B, T, 65535, 0, 1, "--data");

  const std::vector<std::pair<const std::vector<uint16_t>*, size_t>> steps = {{&a, 0},  {&a, 30}, {&a, 60}, {&c, 0},
                                                                              {&c, 30}, {&a, 0},  {&a, 30}};
  for (size_t k = 0; k < steps.size(); ++k) {
    Batch joined;
    for (int r = 0; r < R; ++r) {
      EXPECT_EQ(ranks[r]->position().position, big.position().position) << "step " << k;
      const Batch got = next_batch(*ranks[r], B, T);
      // Rank r reads at offset (k·R + r)·B·T within the current shard.
      const Batch exp = window(*steps[k].first, steps[k].second + static_cast<size_t>(r) * BT, BT);
      EXPECT_EQ(got.inputs, exp.inputs) << "step " << k << " rank " << r;
      EXPECT_EQ(got.targets, exp.targets) << "step " << k << " rank " << r;
      joined.inputs.insert(joined.inputs.end(), got.inputs.begin(), got.inputs.end());
      joined.targets.insert(joined.targets.end(), got.targets.begin(), got.targets.end());
    }
    const Batch whole = next_batch(big, R * B, T);
    EXPECT_EQ(joined.inputs, whole.inputs) << "step " << k;
    EXPECT_EQ(joined.targets, whole.targets) << "step " << k;
  }
}

TEST_F(Data, NoShardHoldsOneBatch) {
  write_counting("a.bin", 0, 15);
  write_counting("b.bin", 0, 12);
  expect_error([&] { DataLoader dl(path("*.bin"), 3, 5, 256, 0, 1, "--data"); },
               {"--data", path("a.bin"), "15 tokens", "B·T+1 = 16", "B=3", "T=5", "lower --batch"});
  expect_error([&] { DataLoader dl(path("a.bin"), 1, 8, 256, 1, 2, "--val-data"); },
               {"--val-data", "15 tokens", "ranks·B·T+1 = 17", "T=8", "ranks=2", "lower --batch"});
  EXPECT_NO_THROW(DataLoader(path("a.bin"), 1, 7, 256, 0, 1, "--data"));
}

TEST_F(Data, BadShardFailsWhenTheLoaderOpens) {
  write_counting("a.bin", 0, 100);
  write_raw("b.bin", 1, kShardVersion, 0, {});
  expect_error([&] { DataLoader dl(path("*.bin"), 2, 3, 256, 0, 1, "--data"); }, {path("b.bin"), "magic"});
  expect_error([&] { DataLoader dl(path("a.bin"), 2, 3, 50, 0, 1, "--data"); }, {path("a.bin"), "token 50"});
}

TEST_F(Data, SetPosition) {
  const int B = 2, T = 3;
  write_counting("a.bin", 0, 50);
  const auto b = write_counting("b.bin", 100, 20);
  DataLoader dl(path("*.bin"), B, T, 65535, 0, 1, "--data");
  dl.set_position({1, 13});  // the last window that fits: 13 + 7 = 20
  EXPECT_EQ(dl.position().shard, 1);
  EXPECT_EQ(dl.position().position, 13);
  const Batch got = next_batch(dl, B, T);
  EXPECT_EQ(got.inputs, window(b, 13, 6).inputs);
  EXPECT_EQ(got.targets, window(b, 13, 6).targets);
  EXPECT_EQ(dl.position().shard, 0);  // wrapped
  EXPECT_EQ(dl.position().position, 0);

  for (LoaderPosition bad : {LoaderPosition{2, 0}, LoaderPosition{-1, 0}, LoaderPosition{1, -1}, LoaderPosition{1, 14},
                             LoaderPosition{0, 1000}})
    expect_error([&] { dl.set_position(bad); },
                 {str("shard ", bad.shard, ", token ", bad.position), "2 shards", "same --data, --batch, --seq"});
  EXPECT_EQ(dl.position().shard, 0);  // unchanged by the failed calls
  EXPECT_EQ(dl.position().position, 0);
}

TEST_F(Data, ExpandGlob) {
  for (const char* n : {"c.bin", "a.bin", "b.bin", "x.txt"}) write_shard(path(n), {1, 2});
  EXPECT_EQ(expand_glob(path("*.bin"), "--data"),
            (std::vector<std::string>{path("a.bin"), path("b.bin"), path("c.bin")}));
  EXPECT_EQ(expand_glob(path("x.txt"), "--data"), std::vector<std::string>{path("x.txt")});
  expect_error([&] { expand_glob(path("train_*.bin"), "--val-data"); },
               {"--val-data", path("train_*.bin"), "no such file", "aq-prepare"});
  expect_error([&] { expand_glob("", "--data"); }, {"--data is empty"});
  expect_error([&] { DataLoader dl(path("nothing*.bin"), 1, 1, 256, 0, 1, "--data"); },
               {"--data", "nothing*.bin", "no such file"});
}

}  // namespace
}  // namespace aq
