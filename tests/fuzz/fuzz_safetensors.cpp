// fuzz_safetensors.cpp — the safetensors reader (runtime/safetensors.cpp) on arbitrary file bytes.
//
// Input: a whole file (8-byte header length, JSON header, data). Every tensor the reader accepts is then read as
// float (and its raw bytes touched), so a range the validation let through that lies outside the mapping shows
// up as an ASan error. Seeds: files written by write_safetensors (with checksums) and a hand-made HF-style one.
#include <cstdint>
#include <vector>

#include "runtime/error.h"
#include "runtime/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static aq::fuzz::MemFile file("fuzz_safetensors");
  try {
    aq::SafeTensorsReader r(file.set(data, size));
    for (const auto& [key, value] : r.metadata()) {
      try {
        (void)r.metadata_int(key);
      } catch (const aq::Error&) {
      }
    }
    for (const auto& [name, e] : r.entries()) {
      if (e.end - e.begin > (64u << 20)) continue;  // the reader bounds it by the file size already
      const uint8_t* p = r.bytes(name);
      volatile uint8_t sink = 0;
      for (size_t i = e.begin; i < e.end; ++i) sink = sink ^ p[i - e.begin];
      std::vector<float> out(static_cast<size_t>(aq::shape_numel(e.shape)));
      try {
        r.read(name, e.shape, out.data());
      } catch (const aq::Error&) {  // non-float dtype, checksum mismatch
      }
    }
  } catch (const aq::Error&) {
  }
  return 0;
}
