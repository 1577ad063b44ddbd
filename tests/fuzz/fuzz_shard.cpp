// fuzz_shard.cpp — the llm.c token shard reader and the batch loader (runtime/data.cpp).
//
// Input: byte 0 picks the vocabulary size (V = 2^(b % 17), 1..65536), byte 1 the batch shape (B 1..4, T 1..16),
// the rest is the shard file. A shard the reader accepts is loaded by a DataLoader and a few batches are drawn
// (every input and target id must be < V, as the reader promised), then the position is moved with
// set_position and set_split as a resume and --balance would.
#include <cstdint>
#include <vector>

#include "runtime/data.h"
#include "runtime/error.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static aq::fuzz::MemFile file("fuzz_shard");
  if (size < 2) return 0;
  const int vocab = 1 << (data[0] % 17);
  const int B = 1 + (data[1] & 3), T = 1 + ((data[1] >> 2) & 15);
  const std::string& path = file.set(data + 2, size - 2);
  try {
    aq::Shard shard(path, vocab);
    const uint16_t* tok = shard.tokens();
    for (size_t i = 0; i < shard.num_tokens(); ++i)
      if (tok[i] >= vocab) aq::fuzz::property_failed("Shard accepted a token >= vocab");
    aq::DataLoader loader(path, B, T, vocab, 0, 1, "--data");
    std::vector<int32_t> in(static_cast<size_t>(B * T)), tg(in.size());
    for (int s = 0; s < 3; ++s) {
      loader.next(in.data(), tg.data());
      for (size_t i = 0; i < in.size(); ++i)
        if (in[i] < 0 || in[i] >= vocab || tg[i] < 0 || tg[i] >= vocab)
          aq::fuzz::property_failed("DataLoader produced an id outside the vocabulary");
    }
    try {
      loader.set_position({0, static_cast<int64_t>(data[1]) * 7});
      loader.next(in.data(), tg.data());
    } catch (const aq::Error&) {
    }
    try {
      loader.set_split(0, 1, 1 + (data[0] & 3));
      loader.next(in.data(), tg.data());
    } catch (const aq::Error&) {
    }
  } catch (const aq::Error&) {
  }
  return 0;
}
