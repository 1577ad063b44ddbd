// fuzz_tokenizer_json.cpp — the Hugging Face tokenizer.json loader (aq::Tokenizer::load_hf_json).
//
// Input: the file's text. A file the loader accepts must then keep the tokenizer's promise, decode(encode(x)) == x
// for any bytes, on a fixed mixed sample and on the input itself (its first 256 bytes). Seeds: the small GPT-2
// and Llama-3 style files of tokenizer_vocab.h and variants that each loader check refuses.
#include <cstdint>
#include <string>
#include <string_view>

#include "runtime/error.h"
#include "runtime/tokenizer.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static aq::fuzz::MemFile file("fuzz_tokenizer.json");
  if (size > (1u << 20)) return 0;
  try {
    const aq::Tokenizer tok = aq::Tokenizer::load_hf_json(file.set(data, size));
    const std::string sample = "The theatre's 123 rows\n\n  of caf\xc3\xa9 \xff\xfe seats";
    const std::string own(reinterpret_cast<const char*>(data), std::min<size_t>(size, 256));
    for (const std::string& text : {sample, own})
      if (tok.decode(tok.encode(text)) != text) aq::fuzz::property_failed("decode(encode(x)) != x");
    if (tok.eot_id() >= tok.vocab_size()) aq::fuzz::property_failed("eot id outside the vocabulary");
  } catch (const aq::Error&) {
  }
  return 0;
}
