// transformer.h — the decoder-only transformer: parameters, activations, forward and backward.
//
// One block structure, two families (ModelConfig::arch): pre-norm blocks (x += attn(norm_1(x));
// x += mlp(norm_2(x))), causal attention, a final norm and an LM head.
//                 GPT-2                               Llama
//   positions     learned table wpe                   rotary (HF rotate_half, rope_theta), inside attention
//   norms         LayerNorm (weight, bias)            RMSNorm (weight; rms_norm_eps)
//   attention     multi-head, with biases             grouped-query (n_kv_head key/value heads), no biases
//   MLP           4C, tanh-GELU, with biases          SwiGLU of width F (gate and up in one GEMM), no biases
//   LM head       tied to the token table             lm_head (untied) or tied (tie_word_embeddings)
// Either family's norms can instead be any registered norm operator (ModelConfig::norm_op, the norm slot), and its
// MLP activation any registered unary operator (ModelConfig::mlp_activation; a Llama's gates it: op(gate) ⊙ up).
// Parameters, gradients and all activations live in three allocations made at construction: the step itself
// never allocates.
//
// The model is a template over the element type T of weights and activations: float for training, double for
// the gradient checks in tests, bf16 for mixed precision on a GPU. Everything kept at full precision — master
// weights, parameter gradients, statistics, losses — has type M = master_t<T> (runtime/bf16.h): for bf16 the
// model holds fp32 master weights beside the bf16 working copy the kernels read, and fp32 gradients (so the
// data-parallel reductions are fp32). Kernels are looked up once in the operator registry (ops/registry.h)
// for the model's device and dtype.
//
// Tensor parallelism (Megatron-LM): with a TP group of size tp, each rank holds
//   * the attention input projection column-parallel by heads (its NH/tp query heads' and NKV/tp key/value
//     heads' columns) and the output projection row-parallel;
//   * the MLP's first GEMM column-parallel (GPT-2's c_fc; Llama's gate and up, each split) and its second
//     row-parallel;
//   * the token table (and an untied lm_head) vocabulary-parallel (ceil(V/tp) rows per rank, rounded up to a
//     multiple of 64 on a GPU), used by the embedding and the vocabulary-parallel cross-entropy — full logits
//     are never gathered;
//   * norms, wpe and the row-parallel biases replicated.
// The conjugate pair: row-parallel outputs are all-reduced in forward (identity in backward), and the input
// gradients of column-parallel layers are all-reduced in backward (identity in forward).
//
// Checkpoints hold Hugging Face tensors whatever the layout: GPT-2's names and Conv1D (input-major) weights as
// kept here; a Llama's q/k/v and gate/up projections are kept packed, and every Llama projection input-major (one
// GEMM each, the layout the kernels take), converted to and from HF's separate [out, in] tensors when a
// checkpoint is written or read (ParamInfo::hf).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ops/adamw/adamw.h"
#include "ops/attention/attention.h"
#include "ops/embedding/embedding.h"
#include "ops/gelu/gelu.h"
#include "ops/glu/glu.h"
#include "ops/layernorm/layernorm.h"
#include "ops/matmul/matmul.h"
#include "ops/op_def.h"
#include "ops/residual/residual.h"
#include "ops/rmsnorm/rmsnorm.h"
#include "ops/rope/rope.h"
#include "ops/softmax_xent/softmax_xent.h"
#include "ops/swiglu/swiglu.h"
#include "parallel/backend.h"
#include "runtime/arena.h"
#include "runtime/memory.h"
#include "runtime/safetensors.h"

namespace aq {

enum class Arch { GPT2, Llama };

struct ModelConfig {
  Arch arch = Arch::GPT2;
  int n_layer = 4, n_head = 4, n_embd = 128, vocab_size = 256, max_seq = 128;
  // The Llama family's (GPT-2 has n_kv_head = n_head, F = 4C, LayerNorm's eps 1e-5, a tied head):
  int n_kv_head = 0;       // num_key_value_heads; 0 = n_head
  int ffn_hidden = 0;      // intermediate_size F; 0 = 4·n_embd
  double norm_eps = 1e-5;  // rms_norm_eps
  double rope_theta = 10000.0;
  bool tied_head = true;  // tie_word_embeddings
  // The MLP's activation — empty for the family's own (GPT-2's GELU, fused into the GEMM; a Llama's silu, fused
  // into SwiGLU), or a registered unary operator ("myorg::squared_relu", from a plugin) run through the generic
  // call path: GPT-2 op(c_fc(x)); a Llama op(gate(x)) ⊙ up(x) (aq::gelu: GeGLU). config.json's
  // activation_function (GPT-2) or hidden_act (Llama: "silu" is the fused path, "gelu_pytorch_tanh" is aq::gelu).
  std::string mlp_activation;
  // Both families: the operator of every norm (GPT-2 ln_1, ln_2, ln_f; Llama input_layernorm,
  // post_attention_layernorm, model.norm) — empty for the family's own (GPT-2 LayerNorm with bias, Llama RMSNorm,
  // fused with the residual add), or a registered operator ("aq::rmsnorm" in a GPT-2, "aq::layernorm" in a Llama,
  // "myorg::norm" from a plugin) run through the generic call path; config.json's and the metadata's "norm_op".
  // A bias tensor exists iff the operator takes one (a third input).
  std::string norm_op;

  bool llama() const { return arch == Arch::Llama; }
  int kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  int ffn() const { return ffn_hidden > 0 ? ffn_hidden : 4 * n_embd; }
  int head_size() const { return n_embd / n_head; }

  void validate() const;  // throws aq::Error with the fix
  // Checkpoint metadata: GPT-2's n_layer, n_head, …; a Llama's Hugging Face config keys and its model_type.
  std::map<std::string, std::string> to_metadata() const;
  // The Hugging Face config.json (model_type gpt2 or llama), written beside the model of every save.
  std::string to_hf_config_json() const;
  std::string describe() const;
  bool operator==(const ModelConfig&) const = default;
};

// A Hugging Face config.json (model_type "gpt2" or "llama"); one clear line for anything else.
ModelConfig read_hf_config(const std::string& path);

// Reads the configuration of a checkpoint. GPT-2 (wte.weight): from its __metadata__ when present, otherwise from
// tensor shapes (a Hugging Face export has no metadata); `heads_override` > 0 supplies n_head when the file lacks
// it. Llama (model.embed_tokens.weight): from its metadata, else `config_json`, else the config.json beside it.
ModelConfig read_checkpoint_config(const SafeTensorsReader& file, int heads_override,
                                   const std::string& config_json = "");

// How a parameter is split over the tensor-parallel ranks.
enum class TpSplit {
  Replicated,     // every rank holds all of it
  VocabRows,      // rows of a [V, C] table, Vl per rank (padded; see above); rank r holds rows r·Vl … (r+1)·Vl−1
  PackedColumns,  // last dimension packs parts side by side (GPT-2 [q | k | v]; Llama [q | k | v] of NH·hs,
                  // NKV·hs, NKV·hs columns, and [gate | up]): rank r holds its slice of each part
  Columns,        // last dimension split evenly
  Rows,           // first dimension split evenly
};

// A Hugging Face tensor cut from a parameter kept here: columns [col0, col1) of a 2-D (rows, cols) parameter,
// transposed to nn.Linear's [out, in].
struct HfPart {
  std::string name;
  int64_t col0, col1;
};

struct ParamInfo {
  std::string name;  // Hugging Face name ("h.3.attn.c_attn.weight"); a packed Llama projection has its own
                     // ("model.layers.0.self_attn.qkv_proj.weight") and its HF tensors in `hf`
  Shape shape;       // this rank's shard
  Shape full_shape;  // the whole tensor, as kept here
  TpSplit split;
  int64_t offset;                   // in elements, into the flat parameter (and gradient, and optimizer state) buffer
  bool decay;                       // AdamW weight decay applies (tensors with >= 2 dimensions)
  std::vector<int64_t> parts = {};  // PackedColumns: the full width of each part, in order
  std::vector<HfPart> hf = {};      // empty: in checkpoints as it is, under `name`
};

// The tensor-parallel group a model instance belongs to; size 1 = the whole model on this rank.
struct TensorParallel {
  int size = 1, rank = 0;
  Backend* group = nullptr;       // collectives on the model's own buffers (its device)
  Backend* host_group = nullptr;  // the same ranks for host memory (checkpoint gathers); null: `group`
};

template <typename T>
class Transformer {
 public:
  using M = master_t<T>;

  // Allocates for batches up to max_batch × max_seq_len tokens (max_seq_len <= cfg.max_seq). The flat buffers
  // are padded to a multiple of `buffer_multiple` elements (ZeRO-1 splits them evenly over data-parallel ranks).
  // Parameters, gradients and activations live on `device`; inputs, targets and results cross as host data.
  // The token table's rows per TP rank are rounded up to `vocab_multiple` (0: the device's own choice, 64 on a
  // GPU and 1 on the CPU); ranks that exchange flat buffers across devices (DiLoCo with a GPU centre beside a
  // CPU one) pass kGpuVocabRows everywhere so the buffers line up.
  static constexpr int kGpuVocabRows = 64;
  Transformer(const ModelConfig& cfg, int max_batch, int max_seq_len, TensorParallel tp = {},
              int64_t buffer_multiple = 1, Device device = Device::CPU, int vocab_multiple = 0);

  const ModelConfig& config() const { return cfg_; }
  const std::vector<ParamInfo>& params_info() const { return params_info_; }
  int64_t num_params() const { return num_params_; }    // real parameters (without alignment padding)
  int64_t buffer_size() const { return buffer_size_; }  // flat buffer length including padding
  Device device() const { return device_; }
  // Master weights (fp32 for bf16; the parameters themselves otherwise) and gradients, on device(). Whoever
  // changes the master weights of a bf16 model calls refresh_working_copy() (or writes the copy itself, as the
  // fused AdamW does).
  M* params() { return master_ptr(); }
  const M* params() const { return const_cast<Transformer*>(this)->master_ptr(); }
  M* grads() { return grads_.data(); }
  T* working_params() { return params_.data(); }  // what the kernels read; == params() unless T is bf16
  void refresh_working_copy(int64_t begin = 0, int64_t end = -1);  // [begin, end) of the buffer; -1: its end
  size_t activation_bytes() const { return acts_arena_.capacity(); }

  const TensorParallel& tensor_parallel() const { return tp_; }

  // GPT-2 initialisation: N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)), biases 0, LayerNorm (1, 0).
  // The full tensors are drawn in the same order whatever tp is, so every layout starts from the same model.
  void init_random(uint64_t seed);
  // Loads every tensor by its Hugging Face name ("transformer." prefix accepted; attention-mask buffers and a
  // tied lm_head.weight ignored) and keeps this rank's shard. `prefix` selects e.g. optimizer moments
  // ("exp_avg.") stored under prefixed names; `host_dst` (host memory laid out like the parameters) defaults
  // to the parameters themselves.
  void load(const SafeTensorsReader& file, const std::string& prefix = "", M* host_dst = nullptr);
  // Whole tensors, in Hugging Face order, assembled from the TP shards of a buffer laid out like the
  // parameters: the parameters themselves by default, or host memory such as an optimizer moment. Collective
  // over the TP group.
  std::vector<NamedTensor> gather_full(const std::string& prefix = "", const M* host_src = nullptr);

  // Called during backward with an offset X each time every gradient at flat offsets >= X is final (the
  // buffer is laid out in forward order, and backward finishes it from the end). Data parallelism starts its
  // bucket all-reduces from here.
  void set_grad_ready_hook(std::function<void(int64_t)> hook) { grad_ready_ = std::move(hook); }
  // Milliseconds spent in tensor-parallel collectives since the last call (all of it exposed: they block).
  double take_tp_comm_ms() {
    const double t = tp_comm_ms_;
    tp_comm_ms_ = 0;
    return t;
  }

  // Mean cross-entropy of the batch; inputs/targets (B,T). No gradients.
  double evaluate(const int32_t* inputs, const int32_t* targets, int B, int T_);
  // Runs forward and backward and returns the mean loss (of the forward pass). The gradients are zeroed first,
  // unless `accumulate` (gradient accumulation: every kernel adds into the parameter gradients, and no
  // collective touches them during backward, so micro-batches sum).
  double forward_backward(const int32_t* inputs, const int32_t* targets, int B, int T_, bool accumulate = false);
  // Logits (V) of the last position of a single sequence of length t (generation).
  void last_logits(const int32_t* tokens, int t, M* logits);

 private:
  // One block's tensors inside a flat buffer: the working parameters (P = T) or the gradients (P = M).
  template <typename P>
  struct LayerPtrs {  // a Llama has no biases: those pointers are null
    P *ln1w, *ln1b, *qkvw, *qkvb, *attprojw, *attprojb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw, *fcprojb;
  };
  using LayerParams = LayerPtrs<T>;
  using LayerGrads = LayerPtrs<M>;
  // One norm instance's statistics, kept from forward for its backward: the built-in norms' mean and rstd (N)
  // (RMSNorm's mean unused), or a registered norm operator's outputs after the first, in declaration order, each
  // sized by the operator's shape function at the largest batch.
  struct NormStats {
    M *mean = nullptr, *rstd = nullptr;
    std::vector<void*> outputs;
  };
  struct LayerActs {
    // LayerNorm outputs are not stored: backward recomputes them from the residual stream (one cheap pass)
    // into a shared scratch buffer, which saves 2·N·C values per layer.
    T* res_in;               // (N,C) residual stream entering the block
    NormStats ln1;           // ln_1's statistics (built-in: mean and rstd, (N) each)
    T* qkv;                  // (N,3C/tp); Llama (N,(NH+2NKV)·hs/tp), q and k rotated
    T* atty;                 // (N,C)
    M* lse;                  // (B,NH,T)
    // res_mid = res_in + c_proj(atty), stored: recomputing it in backward would cost one C×C GEMM per layer on
    // one rank (~2% of a GPT-2 124M step) and a blocking all-reduce with tensor parallelism.
    T* res_mid;  // (N,C)
    NormStats ln2;
    T* fch;  // (N,4C/tp) pre-GELU; GELU is recomputed in backward instead of stored
             // Llama: (N,2F/tp) [gate | up] before SwiGLU (also recomputed)
  };
  struct Kernels {
    typename ops::Embedding<T>::Forward* embedding_forward;
    typename ops::Embedding<T>::Backward* embedding_backward;
    typename ops::LayerNorm<T>::Forward* layernorm_forward;
    typename ops::LayerNorm<T>::ResidualForward* residual_layernorm_forward;
    typename ops::LayerNorm<T>::Backward* layernorm_backward;
    typename ops::Matmul<T>::Forward* matmul_forward;
    typename ops::Matmul<T>::Backward* matmul_backward;
    typename ops::Matmul<T>::GeluForward* matmul_gelu_forward;
    typename ops::Matmul<T>::DgeluBackward* matmul_backward_dgelu;
    typename ops::Attention<T>::Forward* attention_forward;
    typename ops::Attention<T>::Backward* attention_backward;
    typename ops::Gelu<T>::Forward* gelu_forward;
    typename ops::Classifier<T>::Forward* classifier;
    // Llama
    typename ops::RmsNorm<T>::Forward* rmsnorm_forward = nullptr;
    typename ops::RmsNorm<T>::ResidualForward* residual_rmsnorm_forward = nullptr;
    typename ops::RmsNorm<T>::Backward* rmsnorm_backward = nullptr;
    typename ops::SwiGlu<T>::Forward* swiglu_forward = nullptr;
    typename ops::SwiGlu<T>::Backward* swiglu_backward = nullptr;
    typename ops::Rope<T>::Forward* rope_forward = nullptr;
    typename ops::Rope<T>::Backward* rope_backward = nullptr;
    typename ops::Attention<T>::ForwardGqa* attention_gqa_forward = nullptr;
    typename ops::Attention<T>::BackwardGqa* attention_gqa_backward = nullptr;
    typename ops::MultiAdamW<T>::Cast* cast_to_working = nullptr;  // bf16 only
    typename ops::Residual<T>::Forward* residual_forward = nullptr;  // a registered norm (norm_op) only
    // a Llama with a registered MLP activation only
    typename ops::Glu<T>::Split* glu_split = nullptr;
    typename ops::Glu<T>::Forward* glu_forward = nullptr;
    typename ops::Glu<T>::Backward* glu_backward = nullptr;
    typename ops::Glu<T>::Merge* glu_merge = nullptr;
  };
  M* master_ptr() { return std::is_same_v<T, M> ? reinterpret_cast<M*>(params_.data()) : master_.data(); }

  void layout_activations(Arena& arena);
  size_t plan_activation_bytes();
  void build_param_table();
  template <typename P>
  LayerPtrs<P> layer_view(P* base, int l) const;
  void check_batch(int B, int T_) const;
  // Runs the model up to ln_f; returns the inputs as the kernels see them (copied to the device if needed).
  const int32_t* forward_to_lnf(const int32_t* inputs, int B, int T_);
  void tp_all_reduce(T* data, int64_t n, const char* what);
  // The block's norm: LayerNorm, or RMSNorm for a Llama (whose `mean` and bias are unused), or the operator of
  // ModelConfig::norm_op through the registry's generic path (the residual add then runs first, on its own).
  // inp, out, res, a, b_in (N,C); w, b (C); dinp (N,C) and dw, db (C) accumulate; `out` is the forward's output
  // (still in place when backward runs), for an operator that saves it.
  void norm_forward(T* out, NormStats& st, const T* inp, const T* w, const T* b, int64_t N);
  void residual_norm_forward(T* res, T* out, NormStats& st, const T* a, const T* b_in, const T* w, const T* b,
                             int64_t N);
  void norm_backward(T* dinp, M* dw, M* db, const T* dout, const T* inp, const T* out, const T* w, const T* b,
                     const NormStats& st, int64_t N);
  // A registered norm's tensors as views: inputs (inp, w[, b]), outputs (out, statistics…), attributes (eps).
  std::vector<Tensor> norm_inputs(const T* inp, const T* w, const T* b, int64_t N) const;
  std::vector<Tensor> norm_outputs(const T* out, const NormStats& st, int64_t N) const;
  std::vector<ops::AttrValue> norm_attrs() const;
  void take_norm_stats(Arena& a, NormStats& st);
  // A registered operator as the MLP activation (ModelConfig::mlp_activation): out = op(pre), and d(pre) from
  // d(out). All (N, W) with W = act_width() (GPT-2 4C/tp; a Llama's gate, F/tp), through the registry's generic path.
  void activation_forward(T* out, const T* pre, int64_t N);
  void activation_backward(T* dpre, const T* dout, const T* pre, const T* out, int64_t N);
  int64_t act_width() const { return cfg_.llama() ? Fl_ : 4 * static_cast<int64_t>(Cl_); }
  // A Llama's gated MLP around that operator: gelu_ (N,F/tp) = op(gate) ⊙ up from fch's [gate | up] rows.
  void glu_activation_forward(const T* fch, int64_t N);
  // The attention of block `a` from its qkv (Llama: rotates q and k first), and its backward into dqkv.
  void attention_forward(LayerActs& a, int B, int T_);
  void attention_backward(T* dqkv, const T* datty, LayerActs& a, int B, int T_);
  const T* row_parallel_bias(const T* bias) const { return tp_.rank == 0 ? bias : nullptr; }
  void classifier(T* dx, M* dwte, const int32_t* targets, int64_t N);
  const int32_t* to_device(int32_t* slot, const int32_t* host, int64_t n);  // inputs/targets onto the device
  double mean_loss(int64_t N);
  // Runs fn on a host image of the (master) parameters and, for a GPU model, uploads it afterwards.
  void with_host_params(const std::function<void(M*)>& fn);
  void init_random_into(M* host_params, uint64_t seed);
  static void classifier_hook(void* self, M* data, int64_t n, int is_max);
  double tp_comm_ms_ = 0;

  // Dimensions of this rank's shards: width of the attention output Cl (= NHl·hs), heads, the packed qkv width,
  // the MLP width F (4C for GPT-2), the token table's rows.
  int Cl_ = 0, NHl_ = 0, NKVl_ = 0, QKVl_ = 0, Fl_ = 0, Vl_ = 0, v0_ = 0;
  TensorParallel tp_;
  std::function<void(int64_t)> grad_ready_;

  ModelConfig cfg_;
  int max_batch_, max_seq_len_;
  int64_t classifier_chunk_ = 0;
  std::vector<ParamInfo> params_info_;
  // Flat-buffer offsets, fixed at construction so the step never looks a name up.
  // -1: the model has no such tensor (GPT-2: head = wte; a Llama has no wpe and no biases).
  int64_t wte_off_ = 0, wpe_off_ = -1, lnfw_off_ = 0, lnfb_off_ = -1, head_off_ = 0;
  std::vector<std::array<int64_t, 12>> layer_offsets_;  // per block, in LayerParams field order
  int64_t num_params_ = 0, buffer_size_ = 0;
  Device device_;
  DeviceBuffer<T> params_;  // the working parameters the kernels read
  DeviceBuffer<M> master_;  // bf16 only: the fp32 master weights (empty otherwise)
  DeviceBuffer<M> grads_;
  std::vector<M> losses_host_;  // per-token losses brought back to the host (sized once)
  Kernels k_{};

  std::vector<LayerActs> acts_;
  T *res_final_ = nullptr, *lnf_ = nullptr;
  NormStats lnf_stats_;
  // A registered norm (ModelConfig::norm_op), checked once: whether it takes a bias, whether it takes eps, what its
  // backward keeps (OpDef::saved), and its statistics outputs' dtypes (the shape function's, at the planned N).
  bool norm_generic_ = false, norm_bias_ = true, norm_eps_attr_ = false;
  std::vector<int32_t> norm_saved_;
  std::vector<DType> norm_stat_dtypes_;
  std::vector<int64_t> norm_stat_capacity_;  // elements planned per statistics output
  // The statistics' shapes at the last N the step ran with (the shape function never reads data, so they depend
  // on N alone): computed once per batch shape, not at every norm call.
  mutable int64_t norm_stat_n_ = -1;
  mutable std::vector<Shape> norm_stat_shapes_;
  T *lnbuf_ = nullptr, *proj_ = nullptr, *gelu_ = nullptr, *dres_ = nullptr, *dbuf_ = nullptr;
  T *act_dout_ = nullptr, *act_din_ = nullptr;  // a registered MLP activation's gradients (N, act_width())
  T *act_gate_ = nullptr, *act_val_ = nullptr;  // a Llama's: its input (the gate, contiguous) and output (N, F/tp)
  std::vector<int32_t> act_saved_;              // the tensors that operator's backward takes (OpDef::saved), found once
  bool act_accumulates_ = false;                // its input gradient adds (the buffer is zeroed before backward)
  void* logits_ = nullptr;                      // classifier scratch (ops::classifier_scratch_bytes)
  M* losses_ = nullptr;
  int32_t *inputs_ = nullptr, *targets_ = nullptr;
  // Last member: its initialiser runs the layout in planning mode, which writes the members above.
  Arena acts_arena_;
};

}  // namespace aq
