// gpt2.h — the GPT-2 model: parameters, activations, forward and backward.
//
// Pre-LayerNorm blocks (x += attn(ln_1(x)); x += mlp(ln_2(x))), causal attention, a 4C tanh-GELU MLP, a final
// LayerNorm and an LM head tied to the token embedding; learned positions. Parameters, gradients and all
// activations live in three allocations made at construction: the step itself never allocates.
//
// The model is a template over the scalar type: float for training, double for the gradient checks in tests.
// Kernels are looked up once in the operator registry (ops/registry.h) for the model's device and dtype.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ops/adamw/adamw.h"
#include "ops/attention/attention.h"
#include "ops/embedding/embedding.h"
#include "ops/gelu/gelu.h"
#include "ops/layernorm/layernorm.h"
#include "ops/matmul/matmul.h"
#include "ops/softmax_xent/softmax_xent.h"
#include "runtime/arena.h"
#include "runtime/safetensors.h"

namespace aq {

struct GPT2Config {
  int n_layer = 4, n_head = 4, n_embd = 128, vocab_size = 256, max_seq = 128;

  void validate() const;  // throws aq::Error with the fix
  std::map<std::string, std::string> to_metadata() const;  // HF names: n_layer, n_head, n_embd, ...
  std::string describe() const;
  bool operator==(const GPT2Config&) const = default;
};

// Reads the configuration of a GPT-2 checkpoint: from its __metadata__ when present, otherwise from tensor
// shapes (a Hugging Face export has no metadata); `heads_override` > 0 supplies n_head when the file lacks it.
GPT2Config read_checkpoint_config(const SafeTensorsReader& file, int heads_override);

struct ParamInfo {
  std::string name;  // Hugging Face GPT-2 name, e.g. "h.3.attn.c_attn.weight"
  Shape shape;
  int64_t offset;    // in elements, into the flat parameter (and gradient, and optimizer state) buffer
  bool decay;        // AdamW weight decay applies (tensors with >= 2 dimensions)
};

template <typename T>
class GPT2 {
 public:
  // Allocates for batches up to max_batch × max_seq_len tokens (max_seq_len <= cfg.max_seq).
  GPT2(const GPT2Config& cfg, int max_batch, int max_seq_len);

  const GPT2Config& config() const { return cfg_; }
  const std::vector<ParamInfo>& params_info() const { return params_info_; }
  int64_t num_params() const { return num_params_; }  // real parameters (without alignment padding)
  int64_t buffer_size() const { return buffer_size_; }  // flat buffer length including padding
  T* params() { return params_.get(); }
  T* grads() { return grads_.get(); }
  const T* params() const { return params_.get(); }
  size_t activation_bytes() const { return acts_arena_.capacity(); }

  // GPT-2 initialisation: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), biases 0, LayerNorm (1, 0).
  void init_random(uint64_t seed);
  // Loads every tensor by its Hugging Face name ("transformer." prefix accepted; attention-mask buffers and a
  // tied lm_head.weight ignored). The file's configuration must equal config().
  void load(const SafeTensorsReader& file);
  // Views of the parameters in Hugging Face order, for writing a checkpoint.
  std::vector<NamedTensor> named_params();

  // Mean cross-entropy of the batch; inputs/targets (B,T). No gradients.
  double evaluate(const int32_t* inputs, const int32_t* targets, int B, int T_);
  // Zeroes the gradients, runs forward and backward, and returns the mean loss (of the forward pass).
  double forward_backward(const int32_t* inputs, const int32_t* targets, int B, int T_);
  // Logits (V) of the last position of a single sequence of length t (generation).
  void last_logits(const int32_t* tokens, int t, T* logits);

 private:
  struct LayerParams {
    T *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb;
  };
  struct LayerActs {
    // LayerNorm outputs are not stored: backward recomputes them from the residual stream (one cheap pass)
    // into a shared scratch buffer, which saves 2·N·C values per layer.
    T* res_in;            // (N,C) residual stream entering the block
    T *ln1_mean, *ln1_rstd;  // (N), (N)
    T* qkv;               // (N,3C)
    T *atty, *lse;        // (N,C), (B,NH,T)
    // res_mid = res_in + c_proj(atty) is not stored either: backward recomputes it (one C×C GEMM).
    T *ln2_mean, *ln2_rstd;
    T* fch;               // (N,4C) pre-GELU; GELU is recomputed in backward instead of stored
  };
  struct Kernels {
    typename ops::Embedding<T>::Forward* embedding_forward;
    typename ops::Embedding<T>::Backward* embedding_backward;
    typename ops::LayerNorm<T>::Forward* layernorm_forward;
    typename ops::LayerNorm<T>::ResidualForward* residual_layernorm_forward;
    typename ops::LayerNorm<T>::Backward* layernorm_backward;
    typename ops::Matmul<T>::Forward* matmul_forward;
    typename ops::Matmul<T>::Backward* matmul_backward;
    typename ops::Attention<T>::Forward* attention_forward;
    typename ops::Attention<T>::Backward* attention_backward;
    typename ops::Gelu<T>::Forward* gelu_forward;
    typename ops::Gelu<T>::Backward* gelu_backward;
    typename ops::Classifier<T>::Forward* classifier;
  };

  void layout_activations(Arena& arena);
  size_t plan_activation_bytes();
  void build_param_table();
  LayerParams layer_view(T* base, int l) const;
  void check_batch(int B, int T_) const;
  void forward_to_lnf(const int32_t* inputs, int B, int T_);

  GPT2Config cfg_;
  int max_batch_, max_seq_len_;
  int64_t classifier_chunk_ = 0;
  std::vector<ParamInfo> params_info_;
  std::map<std::string, size_t> param_index_;
  int64_t num_params_ = 0, buffer_size_ = 0;
  struct FreeDeleter {
    void operator()(T* p) const;
  };
  std::unique_ptr<T, FreeDeleter> params_, grads_;
  Kernels k_{};

  std::vector<LayerActs> acts_;
  T* res_mid_ = nullptr;  // (N,C) residual after attention of the block being computed
  T *res_final_ = nullptr, *lnf_ = nullptr, *lnf_mean_ = nullptr, *lnf_rstd_ = nullptr;
  T *lnbuf_ = nullptr, *proj_ = nullptr, *gelu_ = nullptr, *dres_ = nullptr, *dbuf_ = nullptr;
  T *logits_ = nullptr, *losses_ = nullptr;
  int32_t *inputs_ = nullptr, *targets_ = nullptr;
  // Last member: its initialiser runs the layout in planning mode, which writes the members above.
  Arena acts_arena_;
};

}  // namespace aq
