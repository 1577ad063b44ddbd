// cuda_test_util.h — helpers shared by the GPU tests: the skip-without-GPU guard, device copies of host
// vectors, kernel lookup by device and dtype, and bf16 rounding for mixed-precision comparisons.
#pragma once

#include <cuda_runtime.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "ops/registry.h"
#include "runtime/bf16.h"
#include "runtime/cuda/device.h"
#include "runtime/data.h"
#include "tests/test_util.h"
#include "train/trainer.h"

namespace aq::test {

#define AQ_REQUIRE_GPU() \
  if (::aq::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device visible (CPU-only machine): GPU test not run"

// A device copy of a host vector; read() brings it back.
template <typename T>
class Dev {
 public:
  explicit Dev(const std::vector<T>& h) : n_(h.size()) {
    EXPECT_EQ(cudaMalloc(&p_, bytes()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p_, h.data(), bytes(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~Dev() { cudaFree(p_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  T* get() { return p_; }
  std::vector<T> read() const {
    std::vector<T> h(n_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(h.data(), p_, bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }

 private:
  size_t bytes() const { return std::max<size_t>(1, n_) * sizeof(T); }
  T* p_ = nullptr;
  size_t n_;
};

template <typename Fn>
Fn* find_kernel(const char* op, Device d, DType t) {
  return ops::Registry::instance().find<Fn>(op, d, t);
}

inline std::vector<bf16> to_bf16(const std::vector<float>& x) {
  std::vector<bf16> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = float_to_bf16(x[i]);
  return y;
}
inline std::vector<float> to_float(const std::vector<bf16>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = bf16_to_float(x[i]);
  return y;
}
// x rounded to the nearest bf16 values (so a CPU reference sees exactly the GPU's inputs)
inline std::vector<float> round_bf16(const std::vector<float>& x) { return to_float(to_bf16(x)); }

// A temporary folder holding a byte-level shard of numbered English sentences, and the small GPT-2 the GPU
// training tests run on it (L2 H4 C64, T ≤ 64). The folder is removed with the object.
class TextShardDir {
 public:
  explicit TextShardDir(int sentences) {
    char tmpl[] = "/tmp/aq-test-cuda-XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    std::string text;
    for (int i = 0; i < sentences; ++i)
      text += "the quick brown fox jumps over the lazy dog " + std::to_string(i) + ". ";
    write_shard(shard(), std::vector<uint16_t>(text.begin(), text.end()));
  }
  ~TextShardDir() { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  std::string shard() const { return path("train.bin"); }
  TrainConfig small_model(int seq, int batch, int steps) const {
    TrainConfig c;
    c.layers = 2;
    c.heads = 4;
    c.dim = 64;
    c.max_seq = 64;
    c.seq = seq;
    c.batch = batch;
    c.steps = steps;
    c.schedule.lr = 1e-3;
    c.data = shard();
    c.quiet = true;
    return c;
  }
  // The same run on a small Llama (C64, 4 query heads over 2 kv heads, F 172, untied head) of vocabulary V, made
  // from a config.json written into the folder.
  TrainConfig small_llama(int seq, int batch, int steps, int vocab) const {
    TrainConfig c = without_shape_flags(small_model(seq, batch, steps));
    c.model_config = path("llama.json");
    std::ofstream(c.model_config) << R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 172,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": )"
                                  << vocab << R"(, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": false})";
    return c;
  }

 private:
  std::string dir_;
};

}  // namespace aq::test
