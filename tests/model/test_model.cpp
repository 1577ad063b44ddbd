// test_model.cpp — whole-model checks: the GPT-2 and Llama gradients against finite differences of the loss
// (double), the float model against the double model on the same weights, initialisation, configuration checks.
#include <cmath>
#include <filesystem>
#include <fstream>

#include "model/transformer.h"
#include "tests/test_util.h"

namespace aq {
namespace {

ModelConfig tiny_config() {
  ModelConfig c;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 8;
  c.vocab_size = 11;
  c.max_seq = 7;
  return c;
}

// A Llama with every feature in play: 3 query heads over 1 key/value head (head size 4), F = 10, rotary theta
// 50 (angles that turn visibly over 5 positions), an untied head (or tied).
ModelConfig tiny_llama(bool tied = false) {
  ModelConfig c;
  c.arch = Arch::Llama;
  c.n_layer = 2;
  c.n_head = 3;
  c.n_kv_head = 1;
  c.n_embd = 12;
  c.ffn_hidden = 10;
  c.vocab_size = 11;
  c.max_seq = 7;
  c.rope_theta = 50;
  c.norm_eps = 1e-5;
  c.tied_head = tied;
  return c;
}

// Random weights everywhere (not just GPT-2 init, whose zero biases and unit norm weights would hide mistakes in
// their gradients); norm weights (1-D "…weight" tensors) around 1.
template <typename T>
void randomize(Transformer<T>& m, uint64_t seed) {
  Rng rng(seed);
  for (const ParamInfo& p : m.params_info()) {
    const double base = p.full_shape.size() == 1 && p.name.ends_with("weight") ? 1.0 : 0.0;
    for (int64_t i = 0; i < shape_numel(p.shape); ++i)
      m.params()[p.offset + i] = static_cast<T>(base + 0.3 * rng.normal());
  }
}

void expect_gradient_matches_finite_differences(const ModelConfig& cfg) {
  const int B = 2, T = 5;
  Transformer<double> model(cfg, B, T);
  randomize(model, 1);
  auto inp = test::random_tokens(B * T, 11, 2), tgt = test::random_tokens(B * T, 11, 3);
  const double loss = model.forward_backward(inp.data(), tgt.data(), B, T);
  EXPECT_NEAR(loss, model.evaluate(inp.data(), tgt.data(), B, T), 1e-14);
  std::vector<double> grads(model.grads(), model.grads() + model.buffer_size());
  for (const ParamInfo& p : model.params_info()) {
    const int64_t n = shape_numel(p.shape);
    double scale = 1e-10, worst = 0;
    for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(grads[p.offset + i]));
    for (int64_t i = 0; i < n; i += std::max<int64_t>(1, n / 25)) {
      double& w = model.params()[p.offset + i];
      const double keep = w, h = 1e-5;
      w = keep + h;
      const double lp = model.evaluate(inp.data(), tgt.data(), B, T);
      w = keep - h;
      const double lm = model.evaluate(inp.data(), tgt.data(), B, T);
      w = keep;
      worst = std::max(worst, std::fabs((lp - lm) / (2 * h) - grads[p.offset + i]) / scale);
    }
    EXPECT_LT(worst, 1e-6) << "gradient of " << p.name;
  }
}

TEST(GPT2, WholeModelGradientMatchesFiniteDifferences) { expect_gradient_matches_finite_differences(tiny_config()); }

TEST(Llama, WholeModelGradientMatchesFiniteDifferences) {
  expect_gradient_matches_finite_differences(tiny_llama());
  expect_gradient_matches_finite_differences(tiny_llama(/*tied=*/true));
}

// ---- the norm slot (ModelConfig::norm_op) -------------------------------------------------------------------

ModelConfig with_norm(ModelConfig c, const std::string& op) {
  c.norm_op = op;
  return c;
}

// Three steps of plain SGD on two float models from the same weights: every loss and every gradient equal bit for
// bit. The generic path adds the residual with its own kernel and then runs the norm on the sum; the fused kernels
// do the same float addition and the same row normalisation, and backward calls the same typed kernels through the
// adapters, so nothing may differ at all.
void expect_trains_bit_for_bit(const ModelConfig& a_cfg, const ModelConfig& b_cfg) {
  const int B = 3, T = 7;
  Transformer<float> a(a_cfg, B, T), b(b_cfg, B, T);
  ASSERT_EQ(a.buffer_size(), b.buffer_size());
  randomize(a, 21);
  std::copy(a.params(), a.params() + a.buffer_size(), b.params());
  for (int step = 0; step < 3; ++step) {
    auto inp = test::random_tokens(B * T, 11, 30 + step), tgt = test::random_tokens(B * T, 11, 40 + step);
    const double la = a.forward_backward(inp.data(), tgt.data(), B, T);
    const double lb = b.forward_backward(inp.data(), tgt.data(), B, T);
    EXPECT_EQ(la, lb) << "step " << step;
    for (int64_t i = 0; i < a.buffer_size(); ++i) {
      ASSERT_EQ(a.grads()[i], b.grads()[i]) << "step " << step << ", gradient element " << i;
      a.params()[i] -= 0.1f * a.grads()[i];
      b.params()[i] -= 0.1f * b.grads()[i];
    }
  }
}

// Whole tensors (Hugging Face order) of a buffer laid out like m's parameters, as host floats.
std::vector<std::vector<float>> whole_tensors(Transformer<float>& m, const float* buffer) {
  std::vector<std::vector<float>> out;
  for (const NamedTensor& t : m.gather_full("", buffer))
    out.emplace_back(t.tensor.data<float>(), t.tensor.data<float>() + t.tensor.numel());
  return out;
}

// A CPU model with the token table laid out as on a GPU (rows padded to a multiple of 64, as the CPU centre of a
// DiLoCo job beside a GPU centre does, so their flat buffers line up): the same initial weights, and three SGD
// steps with the same losses and the same gradients of every real parameter, bit for bit; the padding stays 0.
TEST(GpuVocabLayout, OnTheCpuTrainsBitForBitLikeTheCpuLayout) {
  for (const ModelConfig& cfg : {tiny_config(), tiny_llama()}) {
    SCOPED_TRACE(cfg.describe());
    const int B = 3, T = 7;
    Transformer<float> a(cfg, B, T), b(cfg, B, T, {}, 1, Device::CPU, Transformer<float>::kGpuVocabRows);
    ASSERT_GT(b.buffer_size(), a.buffer_size());  // 11 rows padded to 64
    a.init_random(5);
    b.init_random(5);
    EXPECT_EQ(whole_tensors(a, a.params()), whole_tensors(b, b.params()));
    for (int step = 0; step < 3; ++step) {
      auto inp = test::random_tokens(B * T, 11, 50 + step), tgt = test::random_tokens(B * T, 11, 60 + step);
      EXPECT_EQ(a.forward_backward(inp.data(), tgt.data(), B, T), b.forward_backward(inp.data(), tgt.data(), B, T))
          << "step " << step;
      EXPECT_EQ(whole_tensors(a, a.grads()), whole_tensors(b, b.grads())) << "step " << step;
      for (Transformer<float>* m : {&a, &b})
        for (int64_t i = 0; i < m->buffer_size(); ++i) m->params()[i] -= 0.1f * m->grads()[i];
    }
    double padding = 0;
    for (const ParamInfo& p : b.params_info())
      if (p.split == TpSplit::VocabRows)
        for (int64_t i = shape_numel(p.full_shape); i < shape_numel(p.shape); ++i)
          padding += std::fabs(b.params()[p.offset + i]);
    EXPECT_EQ(padding, 0.0);
  }
}

TEST(NormSlot, BuiltInNormsThroughTheGenericPathTrainBitForBitLikeTheFusedOnes) {
  expect_trains_bit_for_bit(tiny_config(), with_norm(tiny_config(), "aq::layernorm"));
  expect_trains_bit_for_bit(tiny_llama(), with_norm(tiny_llama(), "aq::rmsnorm"));
}

TEST(NormSlot, GradientsMatchFiniteDifferencesAcrossFamilies) {
  expect_gradient_matches_finite_differences(with_norm(tiny_config(), "aq::rmsnorm"));   // GPT-2 with RMSNorm
  expect_gradient_matches_finite_differences(with_norm(tiny_llama(), "aq::layernorm"));  // a Llama with LayerNorm
}

// Gradient accumulation (--grad-accum) through the generic paths: a second micro-batch run with `accumulate` adds
// its gradients to the first's, so the buffer equals the two micro-batches' gradients computed apart and summed
// (in double, to rounding). Norm weights and biases, the residual stream's gradient and a registered activation's
// input gradient all pass through operator kernels that add (+=) here.
void expect_micro_batches_accumulate(const ModelConfig& cfg) {
  const int B = 2, T = 5;
  Transformer<double> model(cfg, B, T);
  randomize(model, 5);
  const auto in1 = test::random_tokens(B * T, 11, 6), tg1 = test::random_tokens(B * T, 11, 7);
  const auto in2 = test::random_tokens(B * T, 11, 8), tg2 = test::random_tokens(B * T, 11, 9);
  const int64_t n = model.buffer_size();
  model.forward_backward(in1.data(), tg1.data(), B, T);
  std::vector<double> sum(model.grads(), model.grads() + n);
  model.forward_backward(in2.data(), tg2.data(), B, T);
  for (int64_t i = 0; i < n; ++i) sum[i] += model.grads()[i];
  model.forward_backward(in1.data(), tg1.data(), B, T);
  model.forward_backward(in2.data(), tg2.data(), B, T, /*accumulate=*/true);
  double scale = 1e-300, worst = 0;
  for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(sum[i]));
  for (int64_t i = 0; i < n; ++i) worst = std::max(worst, std::fabs(model.grads()[i] - sum[i]) / scale);
  EXPECT_LT(worst, 1e-13) << cfg.describe();
}

TEST(NormSlot, MicroBatchesAccumulateThroughTheGenericPaths) {
  expect_micro_batches_accumulate(with_norm(tiny_config(), "aq::rmsnorm"));
  expect_micro_batches_accumulate(with_norm(tiny_llama(), "aq::layernorm"));
  ModelConfig geglu = with_norm(tiny_llama(), "aq::layernorm");
  geglu.mlp_activation = "aq::gelu";  // hidden_act gelu_pytorch_tanh: op(gate) ⊙ up
  expect_micro_batches_accumulate(geglu);
  ModelConfig gpt2_act = tiny_config();
  gpt2_act.mlp_activation = "aq::gelu";  // GPT-2's activation slot through the generic path
  expect_micro_batches_accumulate(gpt2_act);
}

// The slot's tensors keep the slot's names; a bias exists iff the operator takes one; weights start at 1, biases 0.
TEST(NormSlot, ParameterNamesFollowTheSlotAndTheOperatorsInputs) {
  const auto names = [](const ModelConfig& c) {
    Transformer<float> m(c, 1, 4);
    m.init_random(3);
    std::map<std::string, float> first;  // name -> its first element
    for (const ParamInfo& p : m.params_info()) first[p.name] = m.params()[p.offset];
    return first;
  };
  const auto gpt2 = names(with_norm(tiny_config(), "aq::rmsnorm"));
  EXPECT_EQ(gpt2.count("h.0.ln_1.weight"), 1u);
  EXPECT_EQ(gpt2.count("h.0.ln_1.bias") + gpt2.count("h.1.ln_2.bias") + gpt2.count("ln_f.bias"), 0u);
  EXPECT_EQ(gpt2.at("ln_f.weight"), 1.0f);
  EXPECT_EQ(gpt2.count("h.1.attn.c_proj.bias"), 1u);  // only the norms lose their bias
  EXPECT_EQ(names(tiny_config()).size(), gpt2.size() + 2 * 2 + 1);
  const auto llama = names(with_norm(tiny_llama(), "aq::layernorm"));
  for (const char* n : {"model.layers.0.input_layernorm", "model.layers.1.post_attention_layernorm", "model.norm"}) {
    EXPECT_EQ(llama.at(std::string(n) + ".weight"), 1.0f) << n;
    EXPECT_EQ(llama.at(std::string(n) + ".bias"), 0.0f) << n;
  }
  EXPECT_EQ(llama.size(), names(tiny_llama()).size() + 2 * 2 + 1);
}

class NormSlotFiles : public test::TempDirTest {};

// config.json and the checkpoint metadata carry the slot under "norm_op", only when it is filled.
TEST_F(NormSlotFiles, TheSlotTravelsInConfigJsonAndMetadata) {
  const std::string& dir = dir_;
  EXPECT_EQ(tiny_config().to_hf_config_json().find("norm_op"), std::string::npos);
  EXPECT_EQ(tiny_llama().to_metadata().count("norm_op"), 0u);
  for (const ModelConfig& c : {with_norm(tiny_config(), "aq::rmsnorm"), with_norm(tiny_llama(), "aq::layernorm")}) {
    std::ofstream(dir + "/config.json") << c.to_hf_config_json();
    EXPECT_EQ(read_hf_config(dir + "/config.json"), c);
    EXPECT_NE(c.describe().find(" norm " + c.norm_op), std::string::npos) << c.describe();
    Transformer<double> m(c, 1, 4);
    randomize(m, 5);
    write_safetensors(dir + "/m.safetensors", m.gather_full(), c.to_metadata());
    SafeTensorsReader f(dir + "/m.safetensors");
    EXPECT_EQ(read_checkpoint_config(f, 0), c);
    Transformer<double> back(c, 1, 4);
    back.load(f);
    for (int64_t i = 0; i < m.buffer_size(); ++i) ASSERT_EQ(m.params()[i], back.params()[i]) << i;
  }
  std::ofstream(dir + "/bad.json") << R"({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 8,
      "vocab_size": 11, "n_positions": 7, "norm_op": "rmsnorm"})";
  test::expect_error([&] { read_hf_config(dir + "/bad.json"); },
                     {dir + "/bad.json", "norm_op \"rmsnorm\" is not an operator name", "ns::op"});
}

// Built-in operators that do not fit the slot, refused at construction in one line naming the operator and why
// (plugin operators that break the contract are refused through aq-train in tests/plugin/model_slots.sh).
TEST(NormSlot, OperatorsOutsideTheContractAreRefusedAtConstruction) {
  test::expect_error([] { Transformer<float>(with_norm(tiny_config(), "nowhere::norm"), 1, 4); },
                     {"norm_op nowhere::norm is not a registered operator", "--plugin"});
  test::expect_error([] { Transformer<float>(with_norm(tiny_config(), "aq::gelu"), 1, 4); },
                     {"norm_op aq::gelu has 1 inputs and 1 outputs", "inp [N,C], w [C] and optionally b [C]"});
  // matmul's input gradient is written, not added: the residual stream's gradient would lose the branch's.
  test::expect_error([] { Transformer<float>(with_norm(tiny_llama(), "aq::matmul"), 1, 4); },
                     {"norm_op aq::matmul overwrites the gradient of its input \"inp\"", "AQ_TENSOR_GRAD_ACCUMULATES"});
}

// ---- a Llama's activation slot (hidden_act: op(gate) ⊙ up) --------------------------------------------------

ModelConfig with_activation(ModelConfig c, const std::string& op) {
  c.mlp_activation = op;
  return c;
}

TEST(LlamaActivation, GeGluGradientMatchesFiniteDifferences) {
  expect_gradient_matches_finite_differences(with_activation(tiny_llama(), "aq::gelu"));
  expect_gradient_matches_finite_differences(with_norm(with_activation(tiny_llama(/*tied=*/true), "aq::gelu"),
                                                       "aq::layernorm"));  // both slots filled at once
}

// The slot really changes the MLP: GeGLU and SwiGLU give other losses from the same weights; and up multiplies
// the activation — with up_proj zeroed every MLP output is 0 whatever the activation, so the two models agree
// exactly. (That the operator sees the gate half is glu_split's, checked in tests/ops/test_ops.cpp.)
TEST(LlamaActivation, TheOperatorChangesTheMlpAndUpMultipliesIt) {
  const int B = 2, T = 5;
  Transformer<double> geglu(with_activation(tiny_llama(), "aq::gelu"), B, T), swiglu(tiny_llama(), B, T);
  randomize(geglu, 8);
  std::copy(geglu.params(), geglu.params() + geglu.buffer_size(), swiglu.params());
  auto inp = test::random_tokens(B * T, 11, 12), tgt = test::random_tokens(B * T, 11, 13);
  EXPECT_NE(geglu.evaluate(inp.data(), tgt.data(), B, T), swiglu.evaluate(inp.data(), tgt.data(), B, T));
  for (const ParamInfo& p : geglu.params_info())
    if (p.name.ends_with("gate_up_proj.weight"))
      for (int64_t r = 0; r < p.shape[0]; ++r)
        for (int64_t c = p.shape[1] / 2; c < p.shape[1]; ++c)
          geglu.params()[p.offset + r * p.shape[1] + c] = swiglu.params()[p.offset + r * p.shape[1] + c] = 0;
  EXPECT_EQ(geglu.evaluate(inp.data(), tgt.data(), B, T), swiglu.evaluate(inp.data(), tgt.data(), B, T));
}

class LlamaActivationFiles : public test::TempDirTest {};

// hidden_act: "silu" is the fused SwiGLU (""), "gelu_pytorch_tanh" HF's GeGLU (aq::gelu, written back under HF's
// name), "ns::op" a registered operator; anything else, or an operator that is not unary, refused in one line.
TEST_F(LlamaActivationFiles, HiddenActIsReadWrittenAndRefusedWithReasons) {
  const std::string& dir = dir_;
  const auto write = [&](const std::string& act) {
    ModelConfig c = tiny_llama();
    std::string text = c.to_hf_config_json();
    text.replace(text.find("\"silu\""), 6, "\"" + act + "\"");
    std::ofstream(dir + "/config.json") << text;
    return dir + "/config.json";
  };
  EXPECT_EQ(read_hf_config(write("silu")).mlp_activation, "");
  const ModelConfig geglu = read_hf_config(write("gelu_pytorch_tanh"));
  EXPECT_EQ(geglu.mlp_activation, "aq::gelu");
  EXPECT_NE(geglu.to_hf_config_json().find("\"hidden_act\": \"gelu_pytorch_tanh\""), std::string::npos);
  EXPECT_NE(geglu.describe().find("activation aq::gelu"), std::string::npos) << geglu.describe();
  EXPECT_EQ(read_hf_config(write("myorg::squared_relu")).mlp_activation, "myorg::squared_relu");
  EXPECT_EQ(geglu.to_metadata().at("hidden_act"), "gelu_pytorch_tanh");
  test::expect_error([&] { read_hf_config(write("relu")); },
                     {"hidden_act \"relu\" is not one Aqueduct runs", "silu", "gelu_pytorch_tanh", "ns::op"});
  test::expect_error(
      [] { Transformer<float>(with_activation(tiny_llama(), "aq::layernorm"), 1, 4); },
      {"hidden_act aq::layernorm has 3 inputs and 3 outputs; the MLP activation slot takes one of each"});
  test::expect_error([] { Transformer<float>(with_activation(tiny_llama(), "nowhere::act"), 1, 4); },
                     {"hidden_act nowhere::act is not a registered operator; load the plugin"});
}

class LlamaFiles : public test::TempDirTest {};

TEST_F(LlamaFiles, HuggingFaceTensorsRoundTripThroughThePackedLayout) {
  // gather_full splits q/k/v and gate/up and transposes to [out, in]; load puts them back: bit-identical.
  Transformer<double> a(tiny_llama(), 1, 4), b(tiny_llama(), 1, 4);
  randomize(a, 9);
  std::vector<NamedTensor> hf = a.gather_full();
  std::map<std::string, Shape> shapes;
  for (const NamedTensor& t : hf) shapes[t.name] = t.tensor.shape();
  EXPECT_EQ(shapes.at("model.layers.1.self_attn.q_proj.weight"), (Shape{12, 12}));
  EXPECT_EQ(shapes.at("model.layers.1.self_attn.k_proj.weight"), (Shape{4, 12}));
  EXPECT_EQ(shapes.at("model.layers.0.mlp.gate_proj.weight"), (Shape{10, 12}));
  EXPECT_EQ(shapes.at("model.layers.0.mlp.down_proj.weight"), (Shape{12, 10}));
  EXPECT_EQ(shapes.at("lm_head.weight"), (Shape{11, 12}));
  EXPECT_EQ(shapes.count("model.layers.0.self_attn.qkv_proj.weight"), 0u);
  // q_proj row o, column i is the packed parameter's element (i, o).
  const ParamInfo& qkv = a.params_info()[2];
  ASSERT_EQ(qkv.name, "model.layers.0.self_attn.qkv_proj.weight");
  for (const NamedTensor& t : hf) {
    if (t.name == "model.layers.0.self_attn.k_proj.weight") {
      EXPECT_EQ(t.tensor.data<double>()[1 * 12 + 5], a.params()[qkv.offset + 5 * 20 + 12 + 1]);
    }
  }
  const std::string& dir = dir_;
  write_safetensors(dir + "/m.safetensors", hf, tiny_llama().to_metadata());
  SafeTensorsReader f(dir + "/m.safetensors");
  EXPECT_EQ(read_checkpoint_config(f, 0), tiny_llama());  // the config travels in the metadata
  // A --model-config that contradicts the file's own config is refused, not taken (rope_theta here).
  ModelConfig other = tiny_llama();
  other.rope_theta = 60;
  std::ofstream(dir + "/other.json") << other.to_hf_config_json();
  test::expect_error([&] { read_checkpoint_config(f, 0, dir + "/other.json"); },
                     {"--model-config " + dir + "/other.json describes", "theta=60", "drop --model-config"});
  std::ofstream(dir + "/same.json") << tiny_llama().to_hf_config_json();
  EXPECT_EQ(read_checkpoint_config(f, 0, dir + "/same.json"), tiny_llama());
  b.load(f);
  for (int64_t i = 0; i < a.buffer_size(); ++i) ASSERT_EQ(a.params()[i], b.params()[i]) << i;
}

TEST_F(LlamaFiles, ConfigJsonIsReadAndRefusedWithReasons) {
  const std::string& dir = dir_;
  const auto write = [&](const std::string& text) {
    std::ofstream(dir + "/config.json") << text;
    return dir + "/config.json";
  };
  std::ofstream(dir + "/good.json") << tiny_llama().to_hf_config_json();
  EXPECT_EQ(read_hf_config(dir + "/good.json"), tiny_llama());
  const std::string base = R"("hidden_size": 12, "intermediate_size": 10, "num_hidden_layers": 2,
      "num_attention_heads": 3, "vocab_size": 11, "max_position_embeddings": 7)";
  const ModelConfig mha = read_hf_config(write(R"({"model_type": "llama", )" + base + "}"));
  EXPECT_EQ(mha.kv_heads(), 3);   // num_key_value_heads absent: multi-head
  EXPECT_EQ(mha.norm_eps, 1e-6);  // Hugging Face's default
  EXPECT_FALSE(mha.tied_head);
  test::expect_error([&] { read_hf_config(write(R"({"model_type": "mistral", )" + base + "}")); },
                     {"model_type \"mistral\" is not one Aqueduct builds (gpt2, llama)"});
  test::expect_error(
      [&] { read_hf_config(write(R"({"model_type": "llama", "num_key_value_heads": 2, )" + base + "}")); },
      {"num_key_value_heads 2 must divide num_attention_heads 3"});
  test::expect_error(
      [&] {
        read_hf_config(write(R"({"model_type": "llama", "rope_scaling": {"rope_type": "llama3"}, )" + base + "}"));
      },
      {"rope_scaling", "is not supported"});
  test::expect_error([&] { read_hf_config(write(R"({"model_type": "llama", "hidden_size": 12})")); },
                     {"has no \"intermediate_size\""});
}

TEST(GPT2, FloatModelMatchesDoubleModel) {
  const int B = 3, T = 7;
  Transformer<double> md(tiny_config(), B, T);
  Transformer<float> mf(tiny_config(), B, T);
  randomize(md, 4);
  for (int64_t i = 0; i < md.buffer_size(); ++i) mf.params()[i] = static_cast<float>(md.params()[i]);
  auto inp = test::random_tokens(B * T, 11, 5), tgt = test::random_tokens(B * T, 11, 6);
  const double ld = md.forward_backward(inp.data(), tgt.data(), B, T);
  const double lf = mf.forward_backward(inp.data(), tgt.data(), B, T);
  EXPECT_NEAR(lf, ld, 1e-5 * ld);
  std::vector<double> gd(md.grads(), md.grads() + md.buffer_size());
  std::vector<float> gf(mf.grads(), mf.grads() + mf.buffer_size());
  EXPECT_LT(test::rel_err(gf, gd), 1e-4);
}

TEST(GPT2, InitialisationFollowsGpt2) {
  ModelConfig c;
  c.n_layer = 3;
  c.n_head = 2;
  c.n_embd = 64;
  c.vocab_size = 300;
  c.max_seq = 16;
  Transformer<float> m(c, 1, 16);
  m.init_random(7);
  for (const ParamInfo& p : m.params_info()) {
    const float* w = m.params() + p.offset;
    const int64_t n = shape_numel(p.shape);
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; ++i) {
      s += w[i];
      s2 += static_cast<double>(w[i]) * w[i];
    }
    const double mean = s / n, sd = std::sqrt(s2 / n - mean * mean);
    if (p.name.find("ln_") != std::string::npos) {
      EXPECT_EQ(mean, p.name.ends_with("weight") ? 1.0 : 0.0) << p.name;
    } else if (!p.name.ends_with(".weight")) {
      EXPECT_EQ(s2, 0.0) << p.name;  // biases start at zero
    } else {
      const bool residual = p.name.ends_with("c_proj.weight");
      const double expect = residual ? 0.02 / std::sqrt(2.0 * c.n_layer) : 0.02;
      EXPECT_NEAR(sd, expect, 0.1 * expect) << p.name;
      EXPECT_NEAR(mean, 0.0, 0.1 * expect) << p.name;
    }
  }
}

TEST(ModelConfig, RejectsBadShapesWithTheFix) {
  ModelConfig c = tiny_config();
  c.n_embd = 10;
  c.n_head = 4;
  try {
    c.validate();
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not divisible by the head count"), std::string::npos) << e.what();
  }
  c = tiny_config();
  c.vocab_size = 70000;
  EXPECT_THROW(c.validate(), Error);
  EXPECT_THROW(Transformer<float>(tiny_config(), 1, 8), Error);  // seq 8 > max_seq 7
}

TEST(GPT2, BatchAndTensorParallelSplitAreCheckedBeforeAnythingIsSized) {
  test::expect_error([] { Transformer<float>(tiny_config(), 0, 4); }, {"--batch must be >= 1 (got 0)"});
  ModelConfig c = tiny_config();
  c.n_head = 3;
  c.n_embd = 3 * (c.n_embd / 3);
  test::expect_error(
      [&] {
        Transformer<float>(c, 1, 4, TensorParallel{2, 0, nullptr});
      },
      {"--tp 2 must divide the head count H=3", "divisors of 3"});
  ModelConfig l = tiny_llama();
  l.n_head = 6;
  l.n_kv_head = 3;
  test::expect_error(
      [&] {
        Transformer<float>(l, 1, 4, TensorParallel{2, 0, nullptr});
      },
      {"--tp 2 must divide the key/value heads num_key_value_heads=3"});
}

}  // namespace
}  // namespace aq
