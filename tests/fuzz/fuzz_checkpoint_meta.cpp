// fuzz_checkpoint_meta.cpp — checkpoint metadata through the safetensors reader: the JSON header and its
// __metadata__ (the trainer's step, checkpoint_id, rng_state, aq_checksums, GPT-2 config keys).
//
// Input: the JSON header text only; the harness frames it (8-byte length) and appends a fixed 64-byte data
// section, so the fuzzer spends its effort on JSON structure rather than on the length prefix (which
// fuzz_safetensors covers). Then every metadata key goes through metadata_int (the trainer's integer keys: step,
// n_layer, …) and every tensor is read (checksum verification against aq_checksums). Seeds: headers of real
// aq-train checkpoints (model and .state) and of a Hugging Face export.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "runtime/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static aq::fuzz::MemFile file("fuzz_checkpoint_meta");
  std::string bytes(8 + size + 64, '\0');
  const uint64_t len = size;
  std::memcpy(bytes.data(), &len, 8);
  if (size) std::memcpy(bytes.data() + 8, data, size);
  for (size_t i = 0; i < 64; ++i) bytes[8 + size + i] = static_cast<char>(i * 37 + 1);
  try {
    aq::SafeTensorsReader r(file.set(bytes.data(), bytes.size()));
    for (const char* key : {"step", "n_layer", "n_head", "n_embd", "vocab_size", "n_positions", "checkpoint_id"}) {
      try {
        (void)r.metadata_int(key);
      } catch (const aq::Error&) {
      }
    }
    for (const auto& [key, value] : r.metadata()) {
      try {
        if (!r.metadata_int(key)) aq::fuzz::property_failed("metadata_int returned nothing for a present key");
      } catch (const aq::Error&) {
      }
    }
    for (const auto& [name, e] : r.entries()) {
      std::vector<double> out(static_cast<size_t>(aq::shape_numel(e.shape)));
      try {
        r.read(name, e.shape, out.data());
      } catch (const aq::Error&) {
      }
    }
  } catch (const aq::Error&) {
  }
  return 0;
}
