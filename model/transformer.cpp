// transformer.cpp — GPT-2 and Llama forward and backward over the registered kernels.
//
// Data flow of one training step (N = B·T tokens):
//   tokens → embedding → L × [norm → qkv GEMM (→ RoPE) → attention → out GEMM (+res) → norm → fc GEMM → GELU or
//          SwiGLU → proj GEMM (+res)] → final norm → classifier (wte or lm_head; loss and dlogits fused)
//          → backward in reverse → gradients.
#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>
#include <vector>

#include "runtime/op_profile.h"
#include "runtime/rng.h"
#include "runtime/sysinfo.h"
#include "runtime/trace.h"

namespace aq {

// ---- configuration ----------------------------------------------------------------------------------------

void ModelConfig::validate() const {
  AQ_CHECK(n_layer >= 1, "--layers must be >= 1 (got ", n_layer, ")");
  AQ_CHECK(n_head >= 1, "--heads must be >= 1 (got ", n_head, ")");
  AQ_CHECK(n_embd >= 1, "--dim must be >= 1 (got ", n_embd, ")");
  AQ_CHECK(n_embd % n_head == 0, "model width C=", n_embd, " is not divisible by the head count H=", n_head,
           "; choose --dim and --heads with C % H == 0 (e.g. --dim ", (n_embd / n_head + 1) * n_head, ")");
  AQ_CHECK(vocab_size >= 2 && vocab_size <= 65535, "vocabulary size ", vocab_size,
           " is out of range: tokens are stored as uint16, so 2 <= V <= 65535");
  AQ_CHECK(max_seq >= 1, "--max-seq must be >= 1 (got ", max_seq, ")");
  AQ_CHECK(mlp_activation.empty() || mlp_activation.find("::") != std::string::npos, "MLP activation \"",
           mlp_activation, "\" is not an operator name: give a registered operator named ns::op");
  AQ_CHECK(
      norm_op.empty() || norm_op.find("::") != std::string::npos, "norm_op \"", norm_op, "\" is not an ",
      "operator name: give a registered operator named ns::op (aq::layernorm, aq::rmsnorm, or one from a --plugin), ",
      "or leave it out for the family's own norm");
  if (!llama()) {
    AQ_CHECK((n_kv_head == 0 || n_kv_head == n_head) && (ffn_hidden == 0 || ffn_hidden == 4 * n_embd) && tied_head,
             "a GPT-2 has n_kv_head = n_head, an MLP of 4·n_embd and a tied head (got ", n_kv_head, ", ", ffn_hidden,
             ", ", tied_head ? "tied" : "untied", "); use model_type llama for the others");
    return;
  }
  AQ_CHECK(kv_heads() >= 1 && n_head % kv_heads() == 0, "num_key_value_heads ", kv_heads(),
           " must divide num_attention_heads ", n_head, " (each key/value head serves a whole group of query heads)");
  AQ_CHECK(head_size() % 2 == 0, "head size ", head_size(), " (hidden_size ", n_embd, " / ", n_head,
           " heads) must be even: rotary embeddings turn pairs of columns");
  AQ_CHECK(ffn() >= 1, "intermediate_size must be >= 1 (got ", ffn(), ")");
  AQ_CHECK(norm_eps > 0 && std::isfinite(norm_eps), "rms_norm_eps must be positive (got ", norm_eps, ")");
  AQ_CHECK(rope_theta > 0 && std::isfinite(rope_theta), "rope_theta must be positive (got ", rope_theta, ")");
}

namespace {

// Doubles as text that reads back to the same value (metadata, config.json).
std::string exact(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

// A Llama's hidden_act for its MLP activation: silu (SwiGLU, the fused path) for none, HF's name for GeGLU's.
std::string llama_hidden_act(const std::string& act) {
  if (act.empty()) return "silu";
  return act == "aq::gelu" ? "gelu_pytorch_tanh" : act;
}

nlohmann::ordered_json hf_config_of_family(const ModelConfig& c) {
  if (!c.llama())
    return {{"architectures", {"GPT2LMHeadModel"}},
            {"model_type", "gpt2"},
            {"n_layer", c.n_layer},
            {"n_head", c.n_head},
            {"n_embd", c.n_embd},
            {"vocab_size", c.vocab_size},
            {"n_positions", c.max_seq},
            {"n_ctx", c.max_seq},
            {"activation_function", c.mlp_activation.empty() ? "gelu_new" : c.mlp_activation},
            {"layer_norm_epsilon", 1e-5},
            {"tie_word_embeddings", true}};
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", c.n_embd},
          {"intermediate_size", c.ffn()},
          {"num_hidden_layers", c.n_layer},
          {"num_attention_heads", c.n_head},
          {"num_key_value_heads", c.kv_heads()},
          {"vocab_size", c.vocab_size},
          {"max_position_embeddings", c.max_seq},
          {"rms_norm_eps", c.norm_eps},
          {"rope_theta", c.rope_theta},
          {"tie_word_embeddings", c.tied_head},
          {"hidden_act", llama_hidden_act(c.mlp_activation)},
          {"attention_bias", false},
          {"mlp_bias", false}};
}

// config.json; the norm slot is written only when it is filled, so saves with the family's own norms (and their
// config.json) are unchanged.
nlohmann::ordered_json hf_config(const ModelConfig& c) {
  nlohmann::ordered_json j = hf_config_of_family(c);
  if (!c.norm_op.empty()) j["norm_op"] = c.norm_op;
  return j;
}

// GPT-2's activation_function: its own tanh GELU (""), or a registered operator "ns::name".
std::string gpt2_activation(const std::string& act, const std::string& where) {
  if (act == "gelu_new" || act == "gelu_pytorch_tanh") return "";
  AQ_CHECK(act.find("::") != std::string::npos, where, ": activation_function \"", act, "\" is not one Aqueduct ",
           "runs: gelu_new (GPT-2's tanh GELU), or a registered operator named ns::op (from a --plugin)");
  return act;
}

// A config.json object (or checkpoint metadata turned into one) → ModelConfig; `where` names it in messages.
ModelConfig config_from_json(const nlohmann::json& j, const std::string& where) {
  const std::string type = j.value("model_type", "");
  const auto num = [&](const char* key) -> int64_t {
    AQ_CHECK(j.contains(key), where, " has no \"", key, "\" (needed for a ", type, " model)");
    const nlohmann::json& v = j.at(key);
    if (v.is_string()) return std::stoll(v.get<std::string>());
    AQ_CHECK(v.is_number_integer(), where, ": \"", key, "\" is not an integer");
    return v.get<int64_t>();
  };
  // Checkpoint metadata holds every value as a string ("true", "1e-05"); config.json holds JSON values.
  const auto flag = [&](const char* key, bool fallback) {
    if (!j.contains(key)) return fallback;
    const nlohmann::json& v = j.at(key);
    return v.is_string() ? v.get<std::string>() == "true" : v.get<bool>();
  };
  const auto real = [&](const char* key, double fallback) {
    if (!j.contains(key)) return fallback;
    const nlohmann::json& v = j.at(key);
    return v.is_string() ? std::stod(v.get<std::string>()) : v.get<double>();
  };
  ModelConfig c;
  if (type == "gpt2") {
    c.n_layer = static_cast<int>(num("n_layer"));
    c.n_head = static_cast<int>(num("n_head"));
    c.n_embd = static_cast<int>(num("n_embd"));
    c.vocab_size = static_cast<int>(num("vocab_size"));
    c.max_seq = static_cast<int>(num("n_positions"));
    c.mlp_activation = gpt2_activation(j.value("activation_function", "gelu_new"), where);
    // What the engine would otherwise silently build differently.
    AQ_CHECK(!j.contains("n_inner") || j.at("n_inner").is_null() || num("n_inner") == 4 * c.n_embd, where,
             ": n_inner other than 4·n_embd is not supported");
    AQ_CHECK(std::fabs(real("layer_norm_epsilon", 1e-5) - 1e-5) < 1e-12, where,
             ": layer_norm_epsilon other than 1e-5 is not supported (GPT-2's LayerNorm kernel uses 1e-5)");
    AQ_CHECK(flag("tie_word_embeddings", true), where, ": an untied GPT-2 head is not supported");
  } else {
    AQ_CHECK(type == "llama", where, ": model_type \"", type, "\" is not one Aqueduct builds (gpt2, llama)");
    c.arch = Arch::Llama;
    c.n_embd = static_cast<int>(num("hidden_size"));
    c.ffn_hidden = static_cast<int>(num("intermediate_size"));
    c.n_layer = static_cast<int>(num("num_hidden_layers"));
    c.n_head = static_cast<int>(num("num_attention_heads"));
    c.n_kv_head = j.contains("num_key_value_heads") ? static_cast<int>(num("num_key_value_heads")) : c.n_head;
    c.vocab_size = static_cast<int>(num("vocab_size"));
    c.max_seq = static_cast<int>(num("max_position_embeddings"));
    c.norm_eps = real("rms_norm_eps", 1e-6);  // Hugging Face's LlamaConfig default
    c.rope_theta = real("rope_theta", 10000.0);
    AQ_CHECK(!j.contains("head_dim") || j.at("head_dim").is_null() || num("head_dim") == c.n_embd / c.n_head, where,
             ": head_dim ", j.contains("head_dim") ? j.at("head_dim").dump() : "", " other than hidden_size / ",
             "num_attention_heads is not supported");
    c.tied_head = flag("tie_word_embeddings", false);
    AQ_CHECK(!j.contains("rope_scaling") || j.at("rope_scaling").is_null() || j.at("rope_scaling") == "null", where,
             ": rope_scaling (Llama 3.1's long-context frequencies) is not supported; remove it or use a model "
             "without it");
    AQ_CHECK(!flag("attention_bias", false) && !flag("mlp_bias", false), where,
             ": attention_bias / mlp_bias are not supported (the Llama blocks here have no biases)");
    // HF Llama: down(act_fn(gate(x)) · up(x)). silu is the fused SwiGLU; gelu_pytorch_tanh (HF's GeGLU) is the
    // built-in aq::gelu; any other registered operator by its name.
    const std::string act = j.value("hidden_act", "silu");
    AQ_CHECK(act == "silu" || act == "gelu_pytorch_tanh" || act.find("::") != std::string::npos, where,
             ": hidden_act \"", act,
             "\" is not one Aqueduct runs: silu (SwiGLU), gelu_pytorch_tanh (GeGLU, aq::gelu), ",
             "or a registered operator named ns::op (from a --plugin)");
    c.mlp_activation = act == "silu" ? "" : act == "gelu_pytorch_tanh" ? "aq::gelu" : act;
  }
  if (j.contains("norm_op")) {
    AQ_CHECK(j.at("norm_op").is_string(), where, ": \"norm_op\" is not a string (an operator name, ns::op)");
    c.norm_op = j.at("norm_op").get<std::string>();
  }
  try {
    c.validate();
  } catch (const Error& e) {
    fail(str(where, ": ", e.what()));
  }
  return c;
}

}  // namespace

std::map<std::string, std::string> ModelConfig::to_metadata() const {
  if (!llama()) {
    std::map<std::string, std::string> m = {
        {"n_layer", std::to_string(n_layer)},     {"n_head", std::to_string(n_head)},
        {"n_embd", std::to_string(n_embd)},       {"vocab_size", std::to_string(vocab_size)},
        {"n_positions", std::to_string(max_seq)}, {"format", "pt"}};
    if (!mlp_activation.empty()) m["activation_function"] = mlp_activation;
    if (!norm_op.empty()) m["norm_op"] = norm_op;
    return m;
  }
  std::map<std::string, std::string> m = {{"format", "pt"}};
  const nlohmann::ordered_json j = hf_config(*this);  // kept alive while items() iterates it
  for (const auto& [k, v] : j.items())
    if (!v.is_array())
      m[k] = v.is_string() ? v.get<std::string>() : v.is_number_float() ? exact(v.get<double>()) : v.dump();
  return m;
}

std::string ModelConfig::to_hf_config_json() const { return hf_config(*this).dump(2) + "\n"; }

std::string ModelConfig::describe() const {
  const std::string norm = norm_op.empty() ? "" : " norm " + norm_op;
  if (!llama())
    return str("L=", n_layer, " H=", n_head, " C=", n_embd, " V=", vocab_size, " maxT=", max_seq,
               mlp_activation.empty() ? "" : " activation " + mlp_activation, norm);
  return str("Llama L=", n_layer, " H=", n_head, " KV=", kv_heads(), " C=", n_embd, " F=", ffn(), " V=", vocab_size,
             " maxT=", max_seq, " theta=", rope_theta, tied_head ? " tied" : "",
             mlp_activation.empty() ? "" : " activation " + mlp_activation, norm);
}

ModelConfig read_hf_config(const std::string& path) {
  std::ifstream in(path);
  AQ_CHECK(in.good(), "cannot read the model config ", path, " (a Hugging Face config.json)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    fail(str(path, " is not JSON (", e.what(), ")"));
  }
  AQ_CHECK(j.is_object() && j.contains("model_type"), path,
           " has no \"model_type\": not a Hugging Face config.json (gpt2 or llama)");
  return config_from_json(j, path);
}

namespace {
std::string strip_prefix(const std::string& name) {
  const std::string p = "transformer.";
  return name.compare(0, p.size(), p) == 0 ? name.substr(p.size()) : name;
}

int metadata_int(const SafeTensorsReader& f, const char* key, int fallback) {
  const std::optional<int64_t> v = f.metadata_int(key);
  if (!v) return fallback;
  AQ_CHECK(*v >= 0 && *v <= 0x7fffffff, f.path(), ": metadata ", key, "=", *v, " is out of range");
  return static_cast<int>(*v);
}
}  // namespace

namespace {

// A checkpoint's own configuration and --model-config must describe the same model: the file wins, and a
// --model-config that says otherwise is refused instead of silently changing the model (rope_theta, eps, …).
void check_same_config(const ModelConfig& own, const std::string& config_json, const SafeTensorsReader& file) {
  if (config_json.empty()) return;
  const ModelConfig given = read_hf_config(config_json);
  AQ_CHECK(given == own, "--model-config ", config_json, " describes ", given.describe(), " but ", file.path(), " is ",
           own.describe(), " (from its own metadata); drop --model-config, or give the file's config");
}

ModelConfig llama_checkpoint_config(const SafeTensorsReader& file, const std::string& config_json) {
  const auto& meta = file.metadata();
  ModelConfig c;
  if (meta.count("model_type")) {  // a save of aq-train: its own configuration first
    nlohmann::json j(meta);
    c = config_from_json(j, file.path() + " (its metadata)");
    check_same_config(c, config_json, file);
  } else if (!config_json.empty()) {
    c = read_hf_config(config_json);
  } else {
    const size_t slash = file.path().find_last_of('/');
    const std::string beside = (slash == std::string::npos ? "" : file.path().substr(0, slash + 1)) + "config.json";
    AQ_CHECK(file_exists(beside), file.path(), " is a Llama-family checkpoint without its configuration: put its ",
             "config.json beside it, or pass --model-config FILE");
    c = read_hf_config(beside);
  }
  AQ_CHECK(c.llama(), file.path(), " holds Llama tensors (model.embed_tokens.weight) but its config says model_type ",
           "gpt2");
  return c;
}

}  // namespace

ModelConfig read_checkpoint_config(const SafeTensorsReader& file, int heads_override, const std::string& config_json) {
  if (file.has("model.embed_tokens.weight")) {  // the Llama family (Hugging Face names)
    const ModelConfig c = llama_checkpoint_config(file, config_json);
    AQ_CHECK(heads_override <= 0 || heads_override == c.n_head, "--heads ", heads_override, " disagrees with ",
             file.path(), ", which records num_attention_heads=", c.n_head, "; drop --heads");
    return c;
  }
  // GPT-2: its metadata, else the tensor shapes; a --model-config fills in what a Hugging Face export lacks
  // (n_head, activation_function) and must agree with the rest.
  const ModelConfig given = config_json.empty() ? ModelConfig{} : read_hf_config(config_json);
  AQ_CHECK(config_json.empty() || !given.llama(), "--model-config ", config_json, " is a Llama config, but ",
           file.path(), " holds GPT-2 tensors (wte.weight); give its GPT-2 config.json");
  std::map<std::string, std::string> names;  // stripped name → name in file
  for (const auto& [name, e] : file.entries()) names[strip_prefix(name)] = name;
  auto shape_of = [&](const std::string& n) -> const Shape& {
    auto it = names.find(n);
    AQ_CHECK(it != names.end(), file.path(), ": missing tensor \"", n, "\" — not a GPT-2 checkpoint");
    return file.entry(it->second).shape;
  };
  const Shape& wte = shape_of("wte.weight");
  const Shape& wpe = shape_of("wpe.weight");
  AQ_CHECK(wte.size() == 2 && wpe.size() == 2 && wte[1] == wpe[1], file.path(), ": wte.weight ", shape_str(wte),
           " and wpe.weight ", shape_str(wpe), " must be [V, C] and [T, C]");
  int layers = 0;
  while (names.count(str("h.", layers, ".ln_1.weight"))) ++layers;

  ModelConfig cfg;
  cfg.vocab_size = metadata_int(file, "vocab_size", static_cast<int>(wte[0]));
  cfg.n_embd = metadata_int(file, "n_embd", static_cast<int>(wte[1]));
  cfg.max_seq = metadata_int(file, "n_positions", static_cast<int>(wpe[0]));
  cfg.n_layer = metadata_int(file, "n_layer", layers);
  const int recorded_heads = metadata_int(file, "n_head", config_json.empty() ? 0 : given.n_head);
  AQ_CHECK(heads_override <= 0 || recorded_heads == 0 || heads_override == recorded_heads, "--heads ", heads_override,
           " disagrees with ", file.path(), ", which records n_head=", recorded_heads,
           "; drop --heads (it only supplies the head count for files that lack it)");
  cfg.n_head = heads_override > 0 ? heads_override : recorded_heads;
  if (file.metadata().count("activation_function"))
    cfg.mlp_activation = gpt2_activation(file.metadata().at("activation_function"), file.path() + " (its metadata)");
  else if (!config_json.empty())
    cfg.mlp_activation = given.mlp_activation;
  if (file.metadata().count("norm_op"))
    cfg.norm_op = file.metadata().at("norm_op");
  else if (!config_json.empty())
    cfg.norm_op = given.norm_op;
  AQ_CHECK(cfg.n_head > 0, file.path(), " does not record the head count (no n_head in its metadata, as in a ",
           "Hugging Face export); pass --heads (12 for GPT-2 124M)");
  AQ_CHECK(cfg.n_layer == layers, file.path(), ": metadata says n_layer=", cfg.n_layer, " but the file has ", layers,
           " blocks (h.0 … h.", layers - 1, ")");
  cfg.validate();
  check_same_config(cfg, config_json, file);
  return cfg;
}

// ---- parameters and their tensor-parallel shards ----------------------------------------------------------

namespace {

// Flat index of local element `li` of a shard inside the full tensor, or -1 for vocabulary padding.
int64_t full_index(const ParamInfo& p, int rank, int64_t li) {
  const int64_t cols_l = p.shape.back(), cols = p.full_shape.back();
  const int64_t i = li / cols_l, j = li % cols_l;
  switch (p.split) {
    case TpSplit::Replicated:
      return li;
    case TpSplit::VocabRows: {
      const int64_t row = rank * p.shape[0] + i;
      return row < p.full_shape[0] ? row * cols + j : -1;
    }
    case TpSplit::Columns:
      return i * cols + rank * cols_l + j;
    case TpSplit::PackedColumns: {  // local column j lies in part k at offset jj of that part's local slice
      const int64_t tp = cols / cols_l;
      int64_t jj = j, base = 0;
      size_t k = 0;
      while (jj >= p.parts[k] / tp) jj -= p.parts[k] / tp, base += p.parts[k], ++k;
      return i * cols + base + rank * (p.parts[k] / tp) + jj;
    }
    case TpSplit::Rows:
      return (rank * p.shape[0] + i) * cols + j;
  }
  return -1;
}

// shard (this rank's part of p) ← the elements of the whole tensor `full` it holds; 0 in vocabulary padding.
template <typename V>
void scatter_shard(const ParamInfo& p, int rank, const V* full, V* shard) {
  const int64_t n = shape_numel(p.shape);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t fi = full_index(p, rank, i);
    shard[i] = fi < 0 ? V(0) : full[fi];
  }
}

}  // namespace

template <typename T>
void Transformer<T>::build_param_table() {
  const int64_t C = cfg_.n_embd, V = cfg_.vocab_size, maxT = cfg_.max_seq, tp = tp_.size;
  int64_t offset = 0;
  auto add = [&](const std::string& name, Shape full, TpSplit split, std::vector<int64_t> parts = {},
                 std::vector<HfPart> hf = {}) {
    Shape local = full;
    if (split == TpSplit::VocabRows) local[0] = Vl_;
    if (split == TpSplit::Columns || split == TpSplit::PackedColumns) local.back() /= tp;
    if (split == TpSplit::Rows) local[0] /= tp;
    const int64_t n = shape_numel(local);
    params_info_.push_back(
        ParamInfo{name, local, full, split, offset, full.size() >= 2, std::move(parts), std::move(hf)});
    num_params_ += shape_numel(full);
    const int64_t at = offset;
    offset += (n + 15) / 16 * 16;  // keep every tensor 64-byte aligned
    return at;
  };
  layer_offsets_.resize(static_cast<size_t>(cfg_.n_layer));
  // A norm's bias exists iff its operator takes one (norm_bias_: the family's own, or ModelConfig::norm_op's third
  // input); its name is the weight's with ".bias" (a Llama with LayerNorm: "input_layernorm.bias", as HF's
  // StableLM names them).
  const auto norm = [&](const std::string& prefix) {
    const int64_t w = add(prefix + ".weight", {C}, TpSplit::Replicated);
    return std::pair<int64_t, int64_t>{w, norm_bias_ ? add(prefix + ".bias", {C}, TpSplit::Replicated) : -1};
  };
  if (cfg_.llama()) {
    // Hugging Face Llama names; the projections input-major, q/k/v and gate/up packed (see transformer.h).
    const int64_t hs = cfg_.head_size(), q = cfg_.n_head * hs, kv = cfg_.kv_heads() * hs, F = cfg_.ffn();
    wte_off_ = add("model.embed_tokens.weight", {V, C}, TpSplit::VocabRows);
    for (int l = 0; l < cfg_.n_layer; ++l) {
      const std::string h = str("model.layers.", l, ".");
      const auto [ln1, ln1b] = norm(h + "input_layernorm");
      const int64_t qkv = add(h + "self_attn.qkv_proj.weight", {C, q + 2 * kv}, TpSplit::PackedColumns, {q, kv, kv},
                              {{h + "self_attn.q_proj.weight", 0, q},
                               {h + "self_attn.k_proj.weight", q, q + kv},
                               {h + "self_attn.v_proj.weight", q + kv, q + 2 * kv}});
      const int64_t o =
          add(h + "self_attn.o_proj.weight", {q, C}, TpSplit::Rows, {}, {{h + "self_attn.o_proj.weight", 0, C}});
      const auto [ln2, ln2b] = norm(h + "post_attention_layernorm");
      const int64_t fc = add(h + "mlp.gate_up_proj.weight", {C, 2 * F}, TpSplit::PackedColumns, {F, F},
                             {{h + "mlp.gate_proj.weight", 0, F}, {h + "mlp.up_proj.weight", F, 2 * F}});
      const int64_t down =
          add(h + "mlp.down_proj.weight", {F, C}, TpSplit::Rows, {}, {{h + "mlp.down_proj.weight", 0, C}});
      layer_offsets_[l] = {ln1, ln1b, qkv, -1, o, -1, ln2, ln2b, fc, -1, down, -1};
    }
    std::tie(lnfw_off_, lnfb_off_) = norm("model.norm");
    head_off_ = cfg_.tied_head ? wte_off_ : add("lm_head.weight", {V, C}, TpSplit::VocabRows);
    buffer_size_ = offset;
    return;
  }
  wte_off_ = add("wte.weight", {V, C}, TpSplit::VocabRows);
  wpe_off_ = add("wpe.weight", {maxT, C}, TpSplit::Replicated);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const std::string h = str("h.", l, ".");
    auto& o = layer_offsets_[l];  // in forward order (the gradient-ready offsets rely on it)
    std::tie(o[0], o[1]) = norm(h + "ln_1");
    o[2] = add(h + "attn.c_attn.weight", {C, 3 * C}, TpSplit::PackedColumns, {C, C, C});
    o[3] = add(h + "attn.c_attn.bias", {3 * C}, TpSplit::PackedColumns, {C, C, C});
    o[4] = add(h + "attn.c_proj.weight", {C, C}, TpSplit::Rows);
    o[5] = add(h + "attn.c_proj.bias", {C}, TpSplit::Replicated);
    std::tie(o[6], o[7]) = norm(h + "ln_2");
    o[8] = add(h + "mlp.c_fc.weight", {C, 4 * C}, TpSplit::Columns);
    o[9] = add(h + "mlp.c_fc.bias", {4 * C}, TpSplit::Columns);
    o[10] = add(h + "mlp.c_proj.weight", {4 * C, C}, TpSplit::Rows);
    o[11] = add(h + "mlp.c_proj.bias", {C}, TpSplit::Replicated);
  }
  std::tie(lnfw_off_, lnfb_off_) = norm("ln_f");
  head_off_ = wte_off_;
  buffer_size_ = offset;
}

template <typename T>
template <typename P>
typename Transformer<T>::template LayerPtrs<P> Transformer<T>::layer_view(P* base, int l) const {
  const auto& o = layer_offsets_[static_cast<size_t>(l)];
  const auto at = [&](int i) { return o[i] < 0 ? nullptr : base + o[i]; };
  return LayerPtrs<P>{at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7), at(8), at(9), at(10), at(11)};
}

// ---- construction -----------------------------------------------------------------------------------------

namespace {
// Rows of logits the classifier holds at once, split evenly over the batch: up to 72 MiB of scratch on the CPU,
// up to 1 GiB on a GPU. Each chunk costs three GEMMs whose small dimension is the chunk's row count, and they
// only reach BLAS speed when it is a few hundred: GPT-2 124M (V = 50257, 2 threads, OpenBLAS) runs its
// classifier GEMMs at 148/142/175 GFLOP/s with 79-row chunks (the former 16 MiB budget), 186/173/205 with 256
// and 196/187/211 with 512, and re-reads the 154 MB token table less often. 72 MiB gives 3 chunks of 342 rows at
// B·T = 1024: most of the speed, with the peak memory still under 0.7x PyTorch's. On a GPU a few hundred rows
// would leave the tensor cores idle (GPT-2 at B·T = 16384 takes 5 chunks instead of 300).
int64_t classifier_rows(int64_t N, size_t row_bytes, Device device) {
  const size_t budget = device == Device::CUDA ? (size_t{1} << 30) : (size_t{72} << 20);
  const int64_t max_rows = std::max<int64_t>(1, static_cast<int64_t>(budget / row_bytes));
  const int64_t chunks = (N + max_rows - 1) / max_rows;
  return (N + chunks - 1) / chunks;
}

// Rows of the token table on each TP rank. On the GPU they are padded to a multiple of 64, so every row of
// the classifier's logits starts 16-byte aligned (GPT-2's V = 50257 is odd) and cuBLASLt can use its fastest
// kernels; the padding rows are zero and receive no gradient. `multiple` > 0 overrides the device's choice.
int local_vocab(const ModelConfig& cfg, const TensorParallel& tp, Device device, int multiple) {
  const int rows = (cfg.vocab_size + tp.size - 1) / tp.size;
  const int m = multiple > 0 ? multiple : device == Device::CUDA ? Transformer<float>::kGpuVocabRows : 1;
  return (rows + m - 1) / m * m;
}

// Validates the configuration, the batch and the tensor-parallel split before anything is sized from them.
// (C % H == 0 and H % tp == 0 give C % tp == 0, so every column split below is whole.)
const ModelConfig& check_args(const ModelConfig& cfg, int max_batch, int max_seq_len, const TensorParallel& tp) {
  cfg.validate();
  AQ_CHECK(max_batch >= 1, "--batch must be >= 1 (got ", max_batch, ")");
  AQ_CHECK(max_seq_len >= 1 && max_seq_len <= cfg.max_seq, "sequence length --seq ", max_seq_len,
           " exceeds the model's context n_positions=", cfg.max_seq, "; lower --seq or build the model with --max-seq ",
           max_seq_len);
  AQ_CHECK(tp.size >= 1 && tp.rank >= 0 && tp.rank < tp.size, "bad tensor-parallel rank ", tp.rank, " of ", tp.size);
  AQ_CHECK(cfg.n_head % tp.size == 0, "--tp ", tp.size, " must divide the head count H=", cfg.n_head,
           " (each rank computes whole heads); choose --tp among the divisors of ", cfg.n_head);
  AQ_CHECK(cfg.kv_heads() % tp.size == 0, "--tp ", tp.size,
           " must divide the key/value heads num_key_value_heads=", cfg.kv_heads(),
           " (each rank holds whole kv heads with the query heads that read them); choose --tp among ",
           "the divisors of ", cfg.kv_heads());
  AQ_CHECK(cfg.ffn() % tp.size == 0, "--tp ", tp.size, " must divide the MLP width intermediate_size=", cfg.ffn(),
           "; choose --tp among its divisors");
  AQ_CHECK(tp.size == 1 || tp.group != nullptr, "tensor parallelism needs a TP process group");
  return cfg;
}
}  // namespace

namespace {

// A registered operator placed as the MLP activation must be elementwise-shaped (one input, one output of the
// same shape), have a backward and a kernel for the model's device and dtype, and — with tensor parallelism,
// where its input is this rank's columns of c_fc's output (a Llama's: of the gate) — a sharding rule that splits
// dimension 1 of its input, its output and its input's gradient. Each failure is one line naming the config key
// (`key`: activation_function, or a Llama's hidden_act), the operator and the fix.
const ops::OpDef& check_activation_op(const std::string& name, Device dev, DType dt, int tp, const char* key) {
  const ops::OpDef* op = ops::OpRegistry::instance().find(name);
  AQ_CHECK(op != nullptr, key, " ", name, " is not a registered operator; load the plugin that ",
           "declares it with --plugin lib.so (or AQ_PLUGIN_PATH)");
  AQ_CHECK(op->inputs.size() == 1 && op->outputs.size() == 1, key, " ", name, " has ", op->inputs.size(),
           " inputs and ", op->outputs.size(), " outputs; the MLP activation slot takes one of each");
  AQ_CHECK(op->has_backward, key, " ", name, " declares no backward, so the model cannot train through it");
  AQ_CHECK(op->kernel(dev, dt) != nullptr, key, " ", name, " has no kernel for ", device_name(dev), "/", dtype_name(dt),
           "; its plugin provides: ", [&] {
             std::string k;
             for (const ops::KernelEntry& e : op->kernels)
               k += str(k.empty() ? "" : ", ", device_name(e.device), "/", dtype_name(e.dtype));
             return k;
           }());
  AQ_CHECK(op->kernel(dev, dt)->forward != nullptr && op->kernel(dev, dt)->backward != nullptr, key, " ", name,
           " has no forward and backward the generic call path can run on ", device_name(dev), "/", dtype_name(dt),
           " (a built-in without an adapter in ops/builtin_adapters.cpp)");
  AQ_CHECK(op->attrs.empty(), key, " ", name, " declares ", op->attrs.size(), " attribute(s); the MLP ",
           "activation slot passes none, so it takes operators without attributes");
  static double probe[60];  // a [6, 10] input the shape function may look at but never reads
  const ops::ShapeResult shape = ops::OpRegistry::instance().infer(name, dt, {Tensor(probe, dt, {6, 10}, dev)}, {});
  AQ_CHECK(shape.shapes.size() == 1 && shape.shapes[0] == Shape({6, 10}) && shape.dtypes[0] == dt, key, " ", name,
           " maps a [6, 10] input to ", shape.shapes.empty() ? "nothing" : shape_str(shape.shapes[0]),
           "; the MLP activation slot needs an output of the input's shape and dtype");
  AQ_CHECK(shape.workspace_bytes == 0, key, " ", name, " asks for ", shape.workspace_bytes,
           " bytes of workspace, which the MLP activation slot does not provide");
  if (tp == 1) return *op;
  const auto splits_dim1 = [](int32_t p) { return p == 1 || p == AQ_SBP_SPLIT_ANY; };
  std::string rules;
  for (const ops::ShardingRule& r : op->sharding) {
    if (splits_dim1(r.inputs.at(0)) && splits_dim1(r.outputs.at(0)) && splits_dim1(r.input_grads.at(0))) return *op;
    rules += str(rules.empty() ? "" : ", ", r.name, " (in ", ops::sbp_str(r.inputs.at(0)), ", out ",
                 ops::sbp_str(r.outputs.at(0)), ")");
  }
  fail(str("--tp ", tp, ": ", key, " ", name, " would run on this rank's columns of mlp.c_fc's output, but ",
           "none of its sharding rules splits dimension 1 of its input, output and gradient (",
           rules.empty() ? "it declares none" : rules, "); run it with --tp 1, or declare such a rule in its plugin"));
}

// The kernels an operator has, for a refusal: "cpu/F64, cuda/F32".
std::string kernel_list(const ops::OpDef& op) {
  std::string k;
  for (const ops::KernelEntry& e : op.kernels)
    k += str(k.empty() ? "" : ", ", device_name(e.device), "/", dtype_name(e.dtype));
  return k.empty() ? "none" : k;
}

// A registered operator placed in the norm slot (ModelConfig::norm_op), checked once at construction against the
// slot's contract; each failure is one line naming the operator, what is wrong and the fix:
//   inputs   inp [N,C], w [C] and optionally b [C], w and b parameters; every input's gradient accumulates (the
//            residual stream's gradient and the weight gradients are sums, as with the built-in norms);
//   outputs  out [N,C] of the input's dtype first, then any statistics without gradient, kept for backward;
//   attrs    none, or one float named eps (given norm_eps);
//   kernels  a forward and a backward for the model's device and dtype, no workspace.
// Norms run replicated under tensor parallelism (their input, the residual stream, is whole on every rank, and so
// are their gradients after the all-reduce before them): an operator that declares sharding rules must have one
// that keeps every tensor whole; one that declares none runs only replicated, which is what the slot needs.
const ops::OpDef& check_norm_op(const std::string& name, Device dev, DType dt, DType grad_dt, int tp, double eps,
                                int64_t C) {
  const std::string what = "norm_op " + name;
  const ops::OpDef* op = ops::OpRegistry::instance().find(name);
  AQ_CHECK(op != nullptr, what, " is not a registered operator; load the plugin that declares it with --plugin ",
           "lib.so (or AQ_PLUGIN_PATH)");
  // A bf16 model keeps fp32 gradients of its parameters. Built-in kernels write w's and b's gradients in that
  // master dtype; operator ABI 1.0 does not tell a plugin so, and aq-op check runs plugin kernels with gradients
  // of the declared dtype, so a plugin's bf16 kernel would write bf16 into an fp32 buffer.
  AQ_CHECK(grad_dt == dt || op->origin == "built-in", what, " comes from a plugin, and a ", dtype_name(dt),
           " model keeps ", dtype_name(grad_dt), " weight gradients, which operator ABI 1.0 does not describe to ",
           "plugins; train it in fp32 (--dtype fp32) or use a built-in norm");
  AQ_CHECK((op->inputs.size() == 2 || op->inputs.size() == 3) && !op->outputs.empty(), what, " has ", op->inputs.size(),
           " inputs and ", op->outputs.size(), " outputs; the norm slot takes inp [N,C], w [C] ",
           "and optionally b [C], and gives out [N,C] first (then any statistics)");
  for (size_t i = 0; i < op->inputs.size(); ++i) {
    const ops::TensorSpec& in = op->inputs[i];
    AQ_CHECK(i == 0 || (in.flags & AQ_TENSOR_PARAM), what, ": input \"", in.name, "\" is not declared a parameter ",
             "(AQ_TENSOR_PARAM); the norm slot's w and b are trained weights");
    AQ_CHECK(!(in.flags & (AQ_TENSOR_NO_GRAD | AQ_TENSOR_OPTIONAL)), what, ": input \"", in.name, "\" is declared ",
             (in.flags & AQ_TENSOR_NO_GRAD) ? "without gradient" : "optional", "; the norm slot trains through inp, ",
             "w and b, and passes all of them");
    AQ_CHECK(in.flags & AQ_TENSOR_GRAD_ACCUMULATES, what, " overwrites the gradient of its input \"", in.name,
             "\"; the norm slot adds it into the residual stream's and the weights' gradients: declare the input ",
             "AQ_TENSOR_GRAD_ACCUMULATES and add (+=) in the backward kernel");
  }
  for (size_t i = 1; i < op->outputs.size(); ++i)
    AQ_CHECK(op->outputs[i].flags & AQ_TENSOR_NO_GRAD, what, ": output \"", op->outputs[i].name, "\" has a ",
             "gradient; the norm slot keeps outputs after the first as statistics for backward, declare them ",
             "AQ_TENSOR_NO_GRAD");
  AQ_CHECK(op->has_backward, what, " declares no backward, so the model cannot train through it");
  const ops::KernelEntry* k = op->kernel(dev, dt);
  AQ_CHECK(k != nullptr, what, " has no kernel for ", device_name(dev), "/", dtype_name(dt),
           "; its plugin provides: ", kernel_list(*op));
  AQ_CHECK(k->forward != nullptr && k->backward != nullptr, what, " has no forward and backward the generic call ",
           "path can run on ", device_name(dev), "/", dtype_name(dt),
           " (a built-in without an adapter in ops/builtin_adapters.cpp)");
  AQ_CHECK(
      op->attrs.empty() || (op->attrs.size() == 1 && op->attrs[0].name == "eps" && op->attrs[0].type == AQ_ATTR_FLOAT),
      what, " declares the attribute(s) ",
      [&] {
        std::string a;
        for (const ops::AttrSpec& s : op->attrs) a += str(a.empty() ? "" : ", ", s.name);
        return a;
      }(),
      "; the norm slot passes at most one, a float named eps (norm_eps), so it takes operators with that ", "or none");
  // inp [3, C], w and b [C]: descriptions at the model's width that the shape function may look at (never data).
  static double probe[1];
  std::vector<Tensor> in = {Tensor(probe, dt, {3, C}, dev), Tensor(probe, dt, {C}, dev)};
  if (op->inputs.size() == 3) in.push_back(Tensor(probe, dt, {C}, dev));
  std::vector<ops::AttrValue> attrs;
  if (!op->attrs.empty()) attrs.push_back(ops::AttrValue::real(eps));
  ops::ShapeResult shape;
  try {
    shape = ops::OpRegistry::instance().infer(name, dt, in, attrs);
  } catch (const Error& e) {
    fail(str(what, " refuses the model's norm input [N, ", C, "]: ", e.what()));
  }
  AQ_CHECK(shape.shapes[0] == Shape({3, C}) && shape.dtypes[0] == dt, what, " maps inp [3, ", C, "] to ",
           dtype_name(shape.dtypes[0]), " ", shape_str(shape.shapes[0]), "; the norm slot needs out of the ",
           "input's shape and dtype (", dtype_name(dt), " [3, ", C, "])");
  AQ_CHECK(shape.workspace_bytes == 0, what, " asks for ", shape.workspace_bytes,
           " bytes of workspace, which the norm slot does not provide");
  if (tp == 1 || op->sharding.empty()) return *op;
  const auto whole = [](const std::vector<int32_t>& v) {
    return std::all_of(v.begin(), v.end(), [](int32_t p) { return p == AQ_SBP_BROADCAST; });
  };
  std::string rules;
  for (const ops::ShardingRule& r : op->sharding) {
    // Replicated norms' weight gradients must come out equal on every TP rank: no partial sums to reduce.
    if (whole(r.inputs) && whole(r.outputs) && whole(r.input_grads)) return *op;
    rules += str(rules.empty() ? "" : ", ", r.name);
  }
  fail(str("--tp ", tp, ": ", what, " runs replicated on every rank (norms are not split), but none of its sharding ",
           "rules (", rules, ") keeps every input, output and input gradient whole; declare a replicated rule in its plugin, or run ",
           "with --tp 1"));
}

}  // namespace

template <typename T>
size_t Transformer<T>::plan_activation_bytes() {
  // The norm slot is checked here, before anything is sized from it: the layout below asks its operator for the
  // shapes of its statistics. (This runs first in construction, in the arena's initialiser.)
  norm_generic_ = !cfg_.norm_op.empty();
  norm_bias_ = !cfg_.llama();  // the family's own: GPT-2's LayerNorm has one, Llama's RMSNorm none
  if (norm_generic_) {
    const ops::OpDef& op = check_norm_op(cfg_.norm_op, device_, dtype_of<T>(), dtype_of<M>(), tp_.size, cfg_.norm_eps, cfg_.n_embd);
    norm_bias_ = op.inputs.size() == 3;
    norm_eps_attr_ = !op.attrs.empty();
    norm_saved_ = op.saved;
    const int64_t N = static_cast<int64_t>(max_batch_) * max_seq_len_;
    static const char described = 0;  // a non-null address: the shape function sees tensors it never reads
    const T* d = reinterpret_cast<const T*>(&described);
    const ops::ShapeResult shape =
        ops::OpRegistry::instance().infer(cfg_.norm_op, dtype_of<T>(), norm_inputs(d, d, d, N), norm_attrs());
    norm_stat_dtypes_.assign(shape.dtypes.begin() + 1, shape.dtypes.end());
    norm_stat_capacity_.clear();
    for (size_t i = 1; i < shape.shapes.size(); ++i) norm_stat_capacity_.push_back(shape_numel(shape.shapes[i]));
  }
  Arena planner = Arena::planner();
  layout_activations(planner);
  return planner.used();
}

template <typename T>
Transformer<T>::Transformer(const ModelConfig& cfg, int max_batch, int max_seq_len, TensorParallel tp,
                            int64_t buffer_multiple, Device device, int vocab_multiple)
    : Cl_(check_args(cfg, max_batch, max_seq_len, tp).n_embd / tp.size),
      NHl_(cfg.n_head / tp.size),
      NKVl_(cfg.kv_heads() / tp.size),
      QKVl_((NHl_ + 2 * NKVl_) * cfg.head_size()),
      Fl_(cfg.ffn() / tp.size),
      Vl_(local_vocab(cfg, tp, device, vocab_multiple)),
      v0_(tp.rank * Vl_),
      tp_(tp),
      cfg_(cfg),
      max_batch_(max_batch),
      max_seq_len_(max_seq_len),
      classifier_chunk_(classifier_rows(static_cast<int64_t>(max_batch) * max_seq_len,
                                        ops::classifier_scratch_bytes<T>(1, Vl_), device)),
      device_(device),
      acts_arena_(plan_activation_bytes(), device) {
  constexpr bool kBf16 = std::is_same_v<T, bf16>;
  AQ_CHECK(!kBf16 || device == Device::CUDA, "--dtype bf16 runs on a GPU (--device cuda); on the ",
           "CPU use --dtype fp32");
  build_param_table();
  AQ_ASSERT(buffer_multiple >= 1, "buffer_multiple ", buffer_multiple);
  buffer_size_ = (buffer_size_ + buffer_multiple - 1) / buffer_multiple * buffer_multiple;
  params_ = DeviceBuffer<T>(device, static_cast<size_t>(buffer_size_));
  if (!std::is_same_v<T, M>) master_ = DeviceBuffer<M>(device, static_cast<size_t>(buffer_size_));
  grads_ = DeviceBuffer<M>(device, static_cast<size_t>(buffer_size_));
  losses_host_.resize(static_cast<size_t>(max_batch) * max_seq_len);
  layout_activations(acts_arena_);

  auto& reg = ops::Registry::instance();
  const DType dt = dtype_of<T>();
  const Device dev = device;
  k_.embedding_forward = reg.find<typename ops::Embedding<T>::Forward>("embedding_forward", dev, dt);
  k_.embedding_backward = reg.find<typename ops::Embedding<T>::Backward>("embedding_backward", dev, dt);
  k_.layernorm_forward = reg.find<typename ops::LayerNorm<T>::Forward>("layernorm_forward", dev, dt);
  k_.residual_layernorm_forward =
      reg.find<typename ops::LayerNorm<T>::ResidualForward>("residual_layernorm_forward", dev, dt);
  k_.layernorm_backward = reg.find<typename ops::LayerNorm<T>::Backward>("layernorm_backward", dev, dt);
  k_.matmul_forward = reg.find<typename ops::Matmul<T>::Forward>("matmul_forward", dev, dt);
  k_.matmul_backward = reg.find<typename ops::Matmul<T>::Backward>("matmul_backward", dev, dt);
  k_.matmul_gelu_forward = reg.find<typename ops::Matmul<T>::GeluForward>("matmul_gelu_forward", dev, dt);
  k_.matmul_backward_dgelu = reg.find<typename ops::Matmul<T>::DgeluBackward>("matmul_backward_dgelu", dev, dt);
  k_.attention_forward = reg.find<typename ops::Attention<T>::Forward>("attention_forward", dev, dt);
  k_.attention_backward = reg.find<typename ops::Attention<T>::Backward>("attention_backward", dev, dt);
  k_.gelu_forward = reg.find<typename ops::Gelu<T>::Forward>("gelu_forward", dev, dt);
  k_.classifier = reg.find<typename ops::Classifier<T>::Forward>("classifier", dev, dt);
  if (!std::is_same_v<T, M>)
    k_.cast_to_working = reg.find<typename ops::MultiAdamW<T>::Cast>("cast_to_working", dev, dt);
  if (cfg_.llama()) {
    k_.rmsnorm_forward = reg.find<typename ops::RmsNorm<T>::Forward>("rmsnorm_forward", dev, dt);
    k_.residual_rmsnorm_forward =
        reg.find<typename ops::RmsNorm<T>::ResidualForward>("residual_rmsnorm_forward", dev, dt);
    k_.rmsnorm_backward = reg.find<typename ops::RmsNorm<T>::Backward>("rmsnorm_backward", dev, dt);
    k_.swiglu_forward = reg.find<typename ops::SwiGlu<T>::Forward>("swiglu_forward", dev, dt);
    k_.swiglu_backward = reg.find<typename ops::SwiGlu<T>::Backward>("swiglu_backward", dev, dt);
    k_.rope_forward = reg.find<typename ops::Rope<T>::Forward>("rope_forward", dev, dt);
    k_.rope_backward = reg.find<typename ops::Rope<T>::Backward>("rope_backward", dev, dt);
    k_.attention_gqa_forward = reg.find<typename ops::Attention<T>::ForwardGqa>("attention_gqa_forward", dev, dt);
    k_.attention_gqa_backward = reg.find<typename ops::Attention<T>::BackwardGqa>("attention_gqa_backward", dev, dt);
  }
  if (!cfg_.mlp_activation.empty()) {
    const ops::OpDef& op = check_activation_op(cfg_.mlp_activation, dev, dt, tp_.size,
                                               cfg_.llama() ? "hidden_act" : "activation_function");
    act_saved_ = op.saved;
    act_accumulates_ = (op.inputs[0].flags & AQ_TENSOR_GRAD_ACCUMULATES) != 0;
    if (cfg_.llama()) {
      k_.glu_split = reg.find<typename ops::Glu<T>::Split>("glu_split", dev, dt);
      k_.glu_forward = reg.find<typename ops::Glu<T>::Forward>("glu_forward", dev, dt);
      k_.glu_backward = reg.find<typename ops::Glu<T>::Backward>("glu_backward", dev, dt);
      k_.glu_merge = reg.find<typename ops::Glu<T>::Merge>("glu_merge", dev, dt);
    }
  }
  if (norm_generic_) k_.residual_forward = reg.find<typename ops::Residual<T>::Forward>("residual_forward", dev, dt);
}

template <typename T>
void Transformer<T>::take_norm_stats(Arena& a, NormStats& st) {
  const int64_t N = static_cast<int64_t>(max_batch_) * max_seq_len_;
  if (!norm_generic_) {
    st.mean = a.take<M>(N);
    st.rstd = a.take<M>(N);
    return;
  }
  st.outputs.clear();
  for (size_t i = 0; i < norm_stat_dtypes_.size(); ++i)
    st.outputs.push_back(a.take<char>(static_cast<size_t>(norm_stat_capacity_[i]) * dtype_size(norm_stat_dtypes_[i])));
}

template <typename T>
void Transformer<T>::layout_activations(Arena& a) {
  const int64_t N = static_cast<int64_t>(max_batch_) * max_seq_len_;
  const int64_t C = cfg_.n_embd, Cl = Cl_;
  acts_.assign(static_cast<size_t>(cfg_.n_layer), LayerActs{});
  for (auto& l : acts_) {
    l.res_in = a.take<T>(N * C);
    take_norm_stats(a, l.ln1);
    l.qkv = a.take<T>(N * QKVl_);  // 3·Cl for GPT-2
    l.atty = a.take<T>(N * Cl);
    l.lse = a.take<M>(N * NHl_);
    take_norm_stats(a, l.ln2);
    l.fch = a.take<T>(N * (cfg_.llama() ? 2 * Fl_ : 4 * Cl));
    l.res_mid = a.take<T>(N * C);
  }
  res_final_ = a.take<T>(N * C);
  lnf_ = a.take<T>(N * C);
  take_norm_stats(a, lnf_stats_);
  // Scratch shared by all layers.
  lnbuf_ = a.take<T>(N * C);  // ln_1 / ln_2 output of the block being computed
  proj_ = a.take<T>(N * C);   // c_proj outputs before the residual add
  // GELU (SwiGLU) output; in backward also d(fch) (a Llama writes its d(gate | up) over fch instead) and d(qkv)
  gelu_ = a.take<T>(N * std::max<int64_t>(cfg_.llama() ? Fl_ : 4 * Cl, QKVl_));
  dres_ = a.take<T>(N * C);  // gradient of the residual stream
  if (!cfg_.mlp_activation.empty()) {
    act_dout_ = a.take<T>(N * act_width());
    act_din_ = a.take<T>(N * act_width());
    if (cfg_.llama()) {
      act_gate_ = a.take<T>(N * Fl_);
      act_val_ = a.take<T>(N * Fl_);
    }
  }
  dbuf_ = a.take<T>(N * C);  // d(ln outputs), d(attention output)
  logits_ = a.take<char>(ops::classifier_scratch_bytes<T>(classifier_chunk_, Vl_));
  losses_ = a.take<M>(N);
  inputs_ = a.take<int32_t>(N);
  targets_ = a.take<int32_t>(N);
}

// ---- initialisation, loading, saving ----------------------------------------------------------------------

template <typename T>
void Transformer<T>::with_host_params(const std::function<void(M*)>& fn) {
  M* master = master_ptr();
  if (device_ == Device::CPU) return fn(master);  // no staging copy on the CPU (it would double the peak)
  std::vector<M> host(static_cast<size_t>(buffer_size_), M(0));
  device_copy(host.data(), Device::CPU, master, device_, host.size() * sizeof(M));
  fn(host.data());
  device_copy(master, device_, host.data(), Device::CPU, host.size() * sizeof(M));
  refresh_working_copy();
}

template <typename T>
void Transformer<T>::refresh_working_copy(int64_t begin, int64_t end) {
  if (end < 0) end = buffer_size_;
  if constexpr (!std::is_same_v<T, M>)
    if (end > begin) k_.cast_to_working(params_.data() + begin, master_.data() + begin, end - begin);
}

template <typename T>
void Transformer<T>::init_random(uint64_t seed) {
  with_host_params([&](M* P) { init_random_into(P, seed); });
}

template <typename T>
void Transformer<T>::init_random_into(M* P, uint64_t seed) {
  Rng rng(seed);
  const double residual_std = 0.02 / std::sqrt(2.0 * cfg_.n_layer);
  std::fill(P, P + buffer_size_, M(0));
  std::vector<M> full;
  for (const ParamInfo& p : params_info_) {
    M* w = P + p.offset;
    const int64_t n = shape_numel(p.shape);
    // Norm weights 1 (GPT-2 LayerNorm bias 0); a Llama's only 1-D tensors are its norms.
    const bool is_ln = cfg_.llama() ? p.full_shape.size() == 1 : p.name.find("ln_") != std::string::npos;
    if (is_ln) {
      if (p.name.ends_with(".weight")) std::fill(w, w + n, M(1));
      continue;  // LayerNorm bias stays 0
    }
    if (!p.name.ends_with(".weight")) continue;  // linear biases stay 0
    // GPT-2 scales its residual projections down; Hugging Face's Llama draws every matrix with std 0.02.
    const bool residual =
        !cfg_.llama() && (p.name.ends_with("attn.c_proj.weight") || p.name.ends_with("mlp.c_proj.weight"));
    const double std = residual ? residual_std : 0.02;
    full.resize(static_cast<size_t>(shape_numel(p.full_shape)));
    for (auto& x : full) x = static_cast<M>(std * rng.normal());
    scatter_shard(p, tp_.rank, full.data(), w);
  }
}

template <typename T>
void Transformer<T>::load(const SafeTensorsReader& file, const std::string& prefix, M* host_dst) {
  if (!host_dst) return with_host_params([&](M* P) { load(file, prefix, P); });
  M* base = host_dst;
  std::map<std::string, std::string> names;
  for (const auto& [name, e] : file.entries()) names[strip_prefix(name)] = name;
  std::vector<M> full, part;
  const auto read_finite = [&](const std::string& name, const Shape& shape, M* dst) {
    auto it = names.find(prefix + name);
    AQ_CHECK(it != names.end(), file.path(), ": missing tensor \"", prefix + name, "\" required by a ", cfg_.describe(),
             cfg_.llama() ? "" : " GPT-2");
    const int64_t n = shape_numel(shape);
    file.read<M>(it->second, shape, dst);
    // A NaN or Inf in a checkpoint is refused with that reason (not left to fail later as a diverging loss).
    for (int64_t i = 0; i < n; ++i)
      AQ_CHECK(std::isfinite(static_cast<double>(dst[i])), file.path(), ": tensor \"", it->second, "\" holds ",
               static_cast<double>(dst[i]), " at element ", i, ": the run had diverged before this save, or the ",
               "file is damaged; resume from an earlier checkpoint");
  };
  for (const ParamInfo& p : params_info_) {
    M* w = base + p.offset;
    full.resize(static_cast<size_t>(shape_numel(p.full_shape)));
    if (p.hf.empty()) {
      read_finite(p.name, p.full_shape, full.data());
    } else {  // Hugging Face [out, in] pieces → columns of the input-major parameter
      const int64_t rows = p.full_shape[0], cols = p.full_shape[1];
      for (const HfPart& h : p.hf) {
        const int64_t w_cols = h.col1 - h.col0;
        part.resize(static_cast<size_t>(w_cols * rows));
        read_finite(h.name, {w_cols, rows}, part.data());
        for (int64_t j = 0; j < w_cols; ++j)
          for (int64_t i = 0; i < rows; ++i)
            full[static_cast<size_t>(i * cols + h.col0 + j)] = part[static_cast<size_t>(j * rows + i)];
      }
    }
    if (p.split == TpSplit::Replicated)
      std::copy(full.begin(), full.end(), w);
    else
      scatter_shard(p, tp_.rank, full.data(), w);
  }
}

template <typename T>
std::vector<NamedTensor> Transformer<T>::gather_full(const std::string& prefix, const M* host_src) {
  std::vector<M> staged;
  if (!host_src && device_ != Device::CPU) {
    staged.resize(static_cast<size_t>(buffer_size_));
    device_copy(staged.data(), Device::CPU, master_ptr(), device_, staged.size() * sizeof(M));
    host_src = staged.data();
  }
  const M* base = host_src ? host_src : master_ptr();
  std::vector<NamedTensor> out;
  std::vector<M> shards;
  for (const ParamInfo& p : params_info_) {
    Tensor full = Tensor::zeros(dtype_of<M>(), p.full_shape);
    M* f = full.data<M>();
    const M* w = base + p.offset;
    const int64_t n = shape_numel(p.shape);
    if (p.split == TpSplit::Replicated || tp_.size == 1) {
      // The whole tensor is here; a padded token table (GPU) has its real rows first.
      std::copy(w, w + shape_numel(p.full_shape), f);
    } else {
      shards.resize(static_cast<size_t>(n * tp_.size));
      Backend* g = tp_.host_group ? tp_.host_group : tp_.group;  // w and shards are host memory here
      g->all_gather(w, shards.data(), n, dtype_of<M>(), {"checkpoint gather " + p.name})->wait();
      for (int r = 0; r < tp_.size; ++r)
        for (int64_t i = 0; i < n; ++i) {
          const int64_t fi = full_index(p, r, i);
          if (fi >= 0) f[fi] = shards[static_cast<size_t>(r * n + i)];
        }
    }
    if (p.hf.empty()) {
      out.push_back(NamedTensor{prefix + p.name, full});
      continue;
    }
    const int64_t rows = p.full_shape[0], cols = p.full_shape[1];
    for (const HfPart& h : p.hf) {  // columns of the input-major parameter → Hugging Face [out, in]
      const int64_t w_cols = h.col1 - h.col0;
      Tensor t = Tensor::zeros(dtype_of<M>(), {w_cols, rows});
      M* d = t.data<M>();
      for (int64_t j = 0; j < w_cols; ++j)
        for (int64_t i = 0; i < rows; ++i) d[j * rows + i] = f[i * cols + h.col0 + j];
      out.push_back(NamedTensor{prefix + h.name, t});
    }
  }
  return out;
}

// ---- forward ----------------------------------------------------------------------------------------------

template <typename T>
void Transformer<T>::check_batch(int B, int T_) const {
  AQ_ASSERT(B >= 1 && B <= max_batch_ && T_ >= 1 && T_ <= max_seq_len_, "batch ", B, "x", T_, " exceeds the planned ",
            max_batch_, "x", max_seq_len_);
}

template <typename T>
void Transformer<T>::tp_all_reduce(T* data, int64_t n, const char* what) {
  if (tp_.size == 1) return;
  ProfileScope prof("tp all-reduce");
  trace::Span span(trace::Stream::TensorParallel, what);
  span.arg("bytes", static_cast<double>(n) * sizeof(T));
  Timer t;
  tp_.group->all_reduce(data, n, dtype_of<T>(), {what})->wait();
  tp_comm_ms_ += t.ms();
}

template <typename T>
const int32_t* Transformer<T>::to_device(int32_t* slot, const int32_t* host, int64_t n) {
  if (device_ == Device::CPU) return host;
  device_copy(slot, device_, host, Device::CPU, static_cast<size_t>(n) * sizeof(int32_t));
  return slot;
}

template <typename T>
double Transformer<T>::mean_loss(int64_t N) {
  device_copy(losses_host_.data(), Device::CPU, losses_, device_, static_cast<size_t>(N) * sizeof(M));
  double sum = 0;
  for (int64_t i = 0; i < N; ++i) sum += static_cast<double>(losses_host_[static_cast<size_t>(i)]);
  return sum / static_cast<double>(N);
}

template <typename T>
std::vector<Tensor> Transformer<T>::norm_inputs(const T* inp, const T* w, const T* b, int64_t N) const {
  const int64_t C = cfg_.n_embd;
  const auto view = [&](const T* p, Shape s) {
    return Tensor(const_cast<T*>(p), dtype_of<T>(), std::move(s), device_);
  };
  std::vector<Tensor> in = {view(inp, {N, C}), view(w, {C})};
  if (norm_bias_) in.push_back(view(b, {C}));
  return in;
}

template <typename T>
std::vector<Tensor> Transformer<T>::norm_outputs(const T* out, const NormStats& st, int64_t N) const {
  // The statistics' shapes at this N come from the operator's shape function; their buffers were sized by it at
  // the largest N, and a shape function whose statistics grow as N shrinks is refused rather than overrun.
  if (N != norm_stat_n_) {
    const ops::ShapeResult shape =
        ops::OpRegistry::instance().infer(cfg_.norm_op, dtype_of<T>(), norm_inputs(out, out, out, N), norm_attrs());
    for (size_t i = 0; i < st.outputs.size(); ++i) {
      const Shape& s = shape.shapes[i + 1];
      AQ_CHECK(shape_numel(s) <= norm_stat_capacity_[i] && shape.dtypes[i + 1] == norm_stat_dtypes_[i], "norm_op ",
               cfg_.norm_op, ": its shape function gives statistics \"",
               ops::OpRegistry::instance().get(cfg_.norm_op).outputs[i + 1].name, "\" ",
               dtype_name(shape.dtypes[i + 1]), " ", shape_str(s), " for ", N, " rows, more than the ",
               norm_stat_capacity_[i], " ", dtype_name(norm_stat_dtypes_[i]),
               " elements it gave for the largest batch; statistics must not grow as the batch shrinks");
    }
    norm_stat_shapes_.assign(shape.shapes.begin() + 1, shape.shapes.end());
    norm_stat_n_ = N;
  }
  std::vector<Tensor> o = {Tensor(const_cast<T*>(out), dtype_of<T>(), {N, cfg_.n_embd}, device_)};
  for (size_t i = 0; i < st.outputs.size(); ++i)
    o.push_back(Tensor(st.outputs[i], norm_stat_dtypes_[i], norm_stat_shapes_[i], device_));
  return o;
}

template <typename T>
std::vector<ops::AttrValue> Transformer<T>::norm_attrs() const {
  if (!norm_eps_attr_) return {};
  return {ops::AttrValue::real(cfg_.norm_eps)};
}

template <typename T>
void Transformer<T>::norm_forward(T* out, NormStats& st, const T* inp, const T* w, const T* b, int64_t N) {
  if (norm_generic_)
    ops::OpRegistry::instance().forward(cfg_.norm_op, norm_inputs(inp, w, b, N), norm_outputs(out, st, N),
                                        norm_attrs());
  else if (cfg_.llama())
    k_.rmsnorm_forward(out, st.rstd, inp, w, N, cfg_.n_embd, cfg_.norm_eps);
  else
    k_.layernorm_forward(out, st.mean, st.rstd, inp, w, b, N, cfg_.n_embd);
}

template <typename T>
void Transformer<T>::residual_norm_forward(T* res, T* out, NormStats& st, const T* a, const T* b_in, const T* w,
                                           const T* b, int64_t N) {
  if (norm_generic_) {
    // No fused form: the add first (one rounding, as in the fused kernels), then the operator on the sum.
    k_.residual_forward(res, a, b_in, N * cfg_.n_embd);
    norm_forward(out, st, res, w, b, N);
  } else if (cfg_.llama()) {
    k_.residual_rmsnorm_forward(res, out, st.rstd, a, b_in, w, N, cfg_.n_embd, cfg_.norm_eps);
  } else {
    k_.residual_layernorm_forward(res, out, st.mean, st.rstd, a, b_in, w, b, N, cfg_.n_embd);
  }
}

template <typename T>
void Transformer<T>::norm_backward(T* dinp, M* dw, M* db, const T* dout, const T* inp, const T* out, const T* w,
                                   const T* b, const NormStats& st, int64_t N) {
  if (!norm_generic_) {
    if (cfg_.llama())
      k_.rmsnorm_backward(dinp, dw, dout, inp, w, st.rstd, N, cfg_.n_embd);
    else
      k_.layernorm_backward(dinp, dw, db, dout, inp, w, st.mean, st.rstd, N, cfg_.n_embd);
    return;
  }
  // The operator's saved tensors (inputs first, then outputs), the gradient of `out` (none for the statistics),
  // and the gradients of inp, w[, b] — all three accumulate (checked at construction).
  const std::vector<Tensor> in = norm_inputs(inp, w, b, N), outs = norm_outputs(out, st, N);
  std::vector<Tensor> saved;
  for (int32_t i : norm_saved_)
    saved.push_back(static_cast<size_t>(i) < in.size() ? in[static_cast<size_t>(i)] : outs[i - in.size()]);
  std::vector<Tensor> dout_v(outs.size());
  dout_v[0] = Tensor(const_cast<T*>(dout), dtype_of<T>(), {N, cfg_.n_embd}, device_);
  const Shape c{cfg_.n_embd};
  std::vector<Tensor> grads = {Tensor(dinp, dtype_of<T>(), {N, cfg_.n_embd}, device_),
                               Tensor(dw, dtype_of<M>(), c, device_)};
  if (norm_bias_) grads.push_back(Tensor(db, dtype_of<M>(), c, device_));
  ops::OpRegistry::instance().backward(cfg_.norm_op, saved, dout_v, grads, norm_attrs());
}

template <typename T>
void Transformer<T>::activation_forward(T* out, const T* pre, int64_t N) {
  const Shape shape{N, act_width()};
  ops::OpRegistry::instance().forward(cfg_.mlp_activation, {Tensor(const_cast<T*>(pre), dtype_of<T>(), shape, device_)},
                                      {Tensor(out, dtype_of<T>(), shape, device_)}, {});
}

template <typename T>
void Transformer<T>::activation_backward(T* dpre, const T* dout, const T* pre, const T* out, int64_t N) {
  const Shape shape{N, act_width()};
  // An operator that adds into its input's gradient gets a zeroed buffer: nothing else contributes to it.
  if (act_accumulates_) device_zero(device_, dpre, static_cast<size_t>(N * act_width()) * sizeof(T));
  const auto view = [&](const T* p) { return Tensor(const_cast<T*>(p), dtype_of<T>(), shape, device_); };
  std::vector<Tensor> saved;  // what the operator declared it keeps: its input (index 0) and/or its output (1)
  for (int32_t i : act_saved_) saved.push_back(view(i == 0 ? pre : out));
  ops::OpRegistry::instance().backward(cfg_.mlp_activation, saved, {view(dout)}, {view(dpre)}, {});
}

template <typename T>
void Transformer<T>::glu_activation_forward(const T* fch, int64_t N) {
  // The operator needs its input contiguous: the gate half of fch's rows is copied out first.
  k_.glu_split(act_gate_, fch, N, Fl_);
  activation_forward(act_val_, act_gate_, N);
  k_.glu_forward(gelu_, act_val_, fch, N, Fl_);
}

template <typename T>
void Transformer<T>::attention_forward(LayerActs& a, int B, int T_) {
  if (!cfg_.llama()) return k_.attention_forward(a.atty, a.lse, a.qkv, B, T_, Cl_, NHl_);
  // q and k rotated in place (the stored qkv is what attention saw, for its backward).
  const int hs = cfg_.head_size();
  profiled("fwd rope", [&] { k_.rope_forward(a.qkv, B, T_, QKVl_, NHl_ + NKVl_, hs, 0, cfg_.rope_theta); });
  k_.attention_gqa_forward(a.atty, a.lse, a.qkv, B, T_, NHl_, NKVl_, hs);
}

template <typename T>
void Transformer<T>::attention_backward(T* dqkv, const T* datty, LayerActs& a, int B, int T_) {
  if (!cfg_.llama()) return k_.attention_backward(dqkv, datty, a.qkv, a.atty, a.lse, B, T_, Cl_, NHl_);
  const int hs = cfg_.head_size();
  k_.attention_gqa_backward(dqkv, datty, a.qkv, a.atty, a.lse, B, T_, NHl_, NKVl_, hs);
  // d(q, k) before the rotation: the inverse rotation of the gradients.
  profiled("bwd rope", [&] { k_.rope_backward(dqkv, B, T_, QKVl_, NHl_ + NKVl_, hs, 0, cfg_.rope_theta); });
}

template <typename T>
const int32_t* Transformer<T>::forward_to_lnf(const int32_t* host_inputs, int B, int T_) {
  check_batch(B, T_);
  const int32_t* inputs = to_device(inputs_, host_inputs, static_cast<int64_t>(B) * T_);
  const int64_t N = static_cast<int64_t>(B) * T_;
  const int C = cfg_.n_embd, L = cfg_.n_layer, Cl = Cl_;
  T* P = params_.data();  // the working copy
  const T* wte = P + wte_off_;
  const T* wpe = wpe_off_ < 0 ? nullptr : P + wpe_off_;  // a Llama has rotary positions instead

  // Vocabulary-parallel embedding: each rank adds the rows it owns; positions are added by TP rank 0 only, so
  // the all-reduce sums exactly one wte row and one wpe row per token.
  profiled("fwd embedding", [&] {
    k_.embedding_forward(acts_[0].res_in, inputs, wte, tp_.rank == 0 ? wpe : nullptr, B, T_, C, v0_, Vl_);
  });
  tp_all_reduce(acts_[0].res_in, N * C, "embedding");
  profiled("fwd layernorm", [&] {
    const LayerParams w0 = layer_view(P, 0);
    norm_forward(lnbuf_, acts_[0].ln1, acts_[0].res_in, w0.ln1w, w0.ln1b, N);
  });
  for (int l = 0; l < L; ++l) {
    trace::Span block_span(trace::Stream::Compute, "fwd block", l);
    const LayerParams w = layer_view(P, l);
    LayerActs& a = acts_[l];
    profiled("fwd gemm attn.c_attn", [&] {  // column-parallel: this rank's heads
      k_.matmul_forward(a.qkv, lnbuf_, w.qkvw, w.qkvb, N, C, QKVl_);
    });
    profiled("fwd attention", [&] { attention_forward(a, B, T_); });
    profiled("fwd gemm attn.c_proj", [&] {  // row-parallel
      k_.matmul_forward(proj_, a.atty, w.attprojw, row_parallel_bias(w.attprojb), N, Cl, C);
    });
    tp_all_reduce(proj_, N * C, "attn.c_proj output");
    T* res_mid = a.res_mid;
    profiled("fwd layernorm",
             [&] { residual_norm_forward(res_mid, lnbuf_, a.ln2, a.res_in, proj_, w.ln2w, w.ln2b, N); });
    if (cfg_.llama()) {
      profiled("fwd gemm mlp.c_fc",  // fch = [gate | up]
               [&] { k_.matmul_forward(a.fch, lnbuf_, w.fcw, nullptr, N, C, 2 * Fl_); });
      if (cfg_.mlp_activation.empty())
        profiled("fwd swiglu", [&] { k_.swiglu_forward(gelu_, a.fch, N, Fl_); });
      else  // a registered activation: gelu_ = op(gate) ⊙ up
        profiled("fwd activation", [&] { glu_activation_forward(a.fch, N); });
    } else if (!cfg_.mlp_activation.empty()) {  // a registered operator: fch = pre-activation, gelu_ = op(fch)
      profiled("fwd gemm mlp.c_fc", [&] { k_.matmul_forward(a.fch, lnbuf_, w.fcw, w.fcb, N, C, 4 * Cl); });
      profiled("fwd activation", [&] { activation_forward(gelu_, a.fch, N); });
    } else {
      profiled("fwd gemm mlp.c_fc", [&] {  // fch = pre-GELU, gelu_ = GELU(fch)
        k_.matmul_gelu_forward(gelu_, a.fch, lnbuf_, w.fcw, w.fcb, N, C, 4 * Cl);
      });
    }
    profiled("fwd gemm mlp.c_proj",
             [&] { k_.matmul_forward(proj_, gelu_, w.fcprojw, row_parallel_bias(w.fcprojb), N, Fl_, C); });
    tp_all_reduce(proj_, N * C, "mlp.c_proj output");
    // The block's residual add is fused into the next LayerNorm (ln_1 of block l+1, or ln_f).
    ProfileScope prof("fwd layernorm");
    if (l + 1 < L) {
      const LayerParams wn = layer_view(P, l + 1);
      LayerActs& n = acts_[l + 1];
      residual_norm_forward(n.res_in, lnbuf_, n.ln1, res_mid, proj_, wn.ln1w, wn.ln1b, N);
    } else {
      residual_norm_forward(res_final_, lnf_, lnf_stats_, res_mid, proj_, P + lnfw_off_,
                            lnfb_off_ < 0 ? nullptr : P + lnfb_off_, N);
    }
  }
  return inputs;
}

template <typename T>
void Transformer<T>::classifier_hook(void* self, M* data, int64_t n, int is_max) {
  auto* m = static_cast<Transformer<T>*>(self);
  ProfileScope prof("tp all-reduce");
  trace::Span span(trace::Stream::TensorParallel, is_max ? "vocab-parallel row max" : "vocab-parallel row sums");
  span.arg("bytes", static_cast<double>(n) * sizeof(M));
  Timer t;
  m->tp_.group
      ->all_reduce(
          data, n, dtype_of<M>(),
          {is_max ? "vocab-parallel row max" : "vocab-parallel row sums", is_max ? ReduceOp::Max : ReduceOp::Sum})
      ->wait();
  m->tp_comm_ms_ += t.ms();
}

template <typename T>
void Transformer<T>::classifier(T* dx, M* dwte, const int32_t* targets, int64_t N) {
  const ops::ReduceHook<M> hook{this, &Transformer<T>::classifier_hook};
  k_.classifier(losses_, dx, dwte, logits_, lnf_, params_.data() + head_off_, targets, N, cfg_.n_embd, Vl_, v0_,
                cfg_.vocab_size, classifier_chunk_, M(1) / static_cast<M>(N), tp_.size > 1 ? &hook : nullptr);
}

template <typename T>
double Transformer<T>::evaluate(const int32_t* inputs, const int32_t* targets, int B, int T_) {
  forward_to_lnf(inputs, B, T_);
  const int64_t N = static_cast<int64_t>(B) * T_;
  classifier(nullptr, nullptr, to_device(targets_, targets, N), N);
  return mean_loss(N);
}

template <typename T>
void Transformer<T>::last_logits(const int32_t* tokens, int t, M* logits) {
  AQ_CHECK(tp_.size == 1 && device_ == Device::CPU, "last_logits (generation) runs on a single CPU rank");
  if constexpr (std::is_same_v<T, M>) {  // a bf16 model lives on a GPU (checked at construction)
    forward_to_lnf(tokens, 1, t);
    // One row through the head: logits = x·wteᵀ (or lm_head; V·C multiply-adds, cheap next to the forward pass).
    const int C = cfg_.n_embd;
    const T* wte = params_.data() + head_off_;
    const T* x = lnf_ + static_cast<int64_t>(t - 1) * C;
    for (int v = 0; v < cfg_.vocab_size; ++v) {
      T acc = 0;
      for (int c = 0; c < C; ++c) acc += x[c] * wte[static_cast<int64_t>(v) * C + c];
      logits[v] = acc;
    }
  }
}

// ---- backward ---------------------------------------------------------------------------------------------

template <typename T>
double Transformer<T>::forward_backward(const int32_t* host_inputs, const int32_t* host_targets, int B, int T_,
                                        bool accumulate) {
  trace::Span forward_span(trace::Stream::Compute, "forward");
  const int32_t* inputs = forward_to_lnf(host_inputs, B, T_);
  forward_span.end();
  const int64_t N = static_cast<int64_t>(B) * T_;
  const int32_t* targets = to_device(targets_, host_targets, N);
  const int C = cfg_.n_embd, L = cfg_.n_layer, Cl = Cl_;
  T* P = params_.data();
  M* G = grads_.data();
  auto ready = [&](int64_t offset) {
    if (grad_ready_) grad_ready_(offset);
  };

  if (!accumulate)
    profiled("zero grads", [&] { device_zero(device_, G, static_cast<size_t>(buffer_size_) * sizeof(M)); });
  // Classifier: loss, and dlnf into dbuf_, dwte accumulated — the logits never exist for the whole batch. Its
  // kernel names its own parts (GEMMs forward and backward, softmax-xent) for the profile.
  trace::Span loss_span(trace::Stream::Compute, "loss (classifier fwd+bwd)");
  profiled("classifier", [&] { classifier(dbuf_, G + head_off_, targets, N); });
  tp_all_reduce(dbuf_, N * C, "d(ln_f output)");
  loss_span.end();
  // Backward: after each block its gradients are final and ready() may launch data-parallel buckets, whose
  // all-reduces then run beside the blocks below it (the overlap the trace shows).
  trace::Span backward_span(trace::Stream::Compute, "backward");

  profiled("bwd layernorm", [&] {
    device_zero(device_, dres_, static_cast<size_t>(N * C) * sizeof(T));
    norm_backward(dres_, G + lnfw_off_, lnfb_off_ < 0 ? nullptr : G + lnfb_off_, dbuf_, res_final_, lnf_, P + lnfw_off_,
                  lnfb_off_ < 0 ? nullptr : P + lnfb_off_, lnf_stats_, N);
  });
  ready(lnfw_off_);
  for (int l = L - 1; l >= 0; --l) {
    trace::Span block_span(trace::Stream::Compute, "bwd block", l);
    const LayerParams w = layer_view(P, l);
    const LayerGrads g = layer_view(G, l);
    LayerActs& a = acts_[l];
    // Recompute what forward did not keep: ln_2 = norm(res_mid), with the same kernel on the same input, so the
    // values are bit-identical to forward's.
    T* res_mid = a.res_mid;
    profiled("bwd recompute layernorm", [&] { norm_forward(lnbuf_, a.ln2, res_mid, w.ln2w, w.ln2b, N); });
    if (cfg_.llama() && !cfg_.mlp_activation.empty()) {
      // A registered activation: op(gate) ⊙ up recomputed from the stored [gate | up] (the gate copy and the
      // operator's output kept for its backward); d(its output) in place over it; d(up) and then d(gate), through
      // the operator's backward, into fch (not read again in this backward).
      profiled("bwd recompute activation", [&] { glu_activation_forward(a.fch, N); });
      profiled("bwd gemm mlp.c_proj",
               [&] { k_.matmul_backward(gelu_, g.fcprojw, nullptr, dres_, gelu_, w.fcprojw, N, Fl_, C); });
      profiled("bwd activation", [&] {
        k_.glu_backward(a.fch, act_dout_, gelu_, act_val_, a.fch, N, Fl_);
        activation_backward(act_din_, act_dout_, act_gate_, act_val_, N);
        k_.glu_merge(a.fch, act_din_, N, Fl_);
      });
      profiled("bwd gemm mlp.c_fc",
               [&] { k_.matmul_backward(dbuf_, g.fcw, nullptr, a.fch, lnbuf_, w.fcw, N, C, 2 * Fl_); });
    } else if (cfg_.llama()) {
      // SwiGLU recomputed from the stored [gate | up]; then d(its output) in place over it, and d(gate | up) in
      // place over fch (neither is read again in this backward).
      profiled("bwd recompute swiglu", [&] { k_.swiglu_forward(gelu_, a.fch, N, Fl_); });
      profiled("bwd gemm mlp.c_proj",
               [&] { k_.matmul_backward(gelu_, g.fcprojw, nullptr, dres_, gelu_, w.fcprojw, N, Fl_, C); });
      profiled("bwd swiglu", [&] { k_.swiglu_backward(a.fch, gelu_, a.fch, N, Fl_); });
      profiled("bwd gemm mlp.c_fc",
               [&] { k_.matmul_backward(dbuf_, g.fcw, nullptr, a.fch, lnbuf_, w.fcw, N, C, 2 * Fl_); });
    } else if (!cfg_.mlp_activation.empty()) {
      // The operator's output recomputed from the stored pre-activation; its gradients in their own buffers (the
      // operator may have saved its output as well as its input).
      profiled("bwd recompute activation", [&] { activation_forward(gelu_, a.fch, N); });
      profiled("bwd gemm mlp.c_proj",
               [&] { k_.matmul_backward(act_dout_, g.fcprojw, g.fcprojb, dres_, gelu_, w.fcprojw, N, 4 * Cl, C); });
      profiled("bwd activation", [&] { activation_backward(act_din_, act_dout_, a.fch, gelu_, N); });
      profiled("bwd gemm mlp.c_fc",
               [&] { k_.matmul_backward(dbuf_, g.fcw, g.fcb, act_din_, lnbuf_, w.fcw, N, C, 4 * Cl); });
    } else {
      // GELU recomputed from the stored pre-activation. Forward's GELU came out of the fused GEMM from the
      // unrounded pre-activation, so with bf16 this input to c_proj's weight gradient can differ from forward's
      // by one bf16 rounding (and by cuBLASLt's GELU vs ours in the last fp32 bits): far below bf16 resolution.
      profiled("bwd recompute gelu", [&] { k_.gelu_forward(gelu_, a.fch, N * 4 * Cl); });
      // dres_ is the gradient of this block's output = res_mid + mlp(...): it flows into both terms.
      // The kernel writes d(fch) = GELU'(fch) ⊙ (dres_·Wᵀ) after its last read of the GELU output, so it may
      // overwrite that buffer in place.
      profiled("bwd gemm mlp.c_proj", [&] {
        k_.matmul_backward_dgelu(gelu_, g.fcprojw, g.fcprojb, dres_, gelu_, w.fcprojw, a.fch, N, 4 * Cl, C);
      });
      profiled("bwd gemm mlp.c_fc",
               [&] { k_.matmul_backward(dbuf_, g.fcw, g.fcb, gelu_, lnbuf_, w.fcw, N, C, 4 * Cl); });
    }
    tp_all_reduce(dbuf_, N * C, "d(ln_2 output)");
    profiled("bwd layernorm",
             [&] { norm_backward(dres_, g.ln2w, g.ln2b, dbuf_, res_mid, lnbuf_, w.ln2w, w.ln2b, a.ln2, N); });
    // dres_ is now the gradient of res_mid = res_in + attn(...).
    profiled("bwd gemm attn.c_proj",
             [&] { k_.matmul_backward(dbuf_, g.attprojw, g.attprojb, dres_, a.atty, w.attprojw, N, Cl, C); });
    profiled("bwd attention", [&] { attention_backward(gelu_, dbuf_, a, B, T_); });  // gelu_ now holds d(qkv)
    profiled("bwd recompute layernorm", [&] {                                        // ln_1
      norm_forward(lnbuf_, a.ln1, a.res_in, w.ln1w, w.ln1b, N);
    });
    profiled("bwd gemm attn.c_attn",
             [&] { k_.matmul_backward(dbuf_, g.qkvw, g.qkvb, gelu_, lnbuf_, w.qkvw, N, C, QKVl_); });
    tp_all_reduce(dbuf_, N * C, "d(ln_1 output)");
    profiled("bwd layernorm",
             [&] { norm_backward(dres_, g.ln1w, g.ln1b, dbuf_, a.res_in, lnbuf_, w.ln1w, w.ln1b, a.ln1, N); });
    block_span.end();
    ready(layer_offsets_[static_cast<size_t>(l)][0]);  // block l's first tensor
  }
  profiled("bwd embedding", [&] {
    k_.embedding_backward(G + wte_off_, wpe_off_ < 0 ? nullptr : G + wpe_off_, dres_, inputs, B, T_, C, v0_, Vl_);
  });
  ready(0);
  backward_span.end();
  // Read last: on a GPU this copy waits for the device, which would stall queuing the backward pass.
  return mean_loss(N);
}

template class Transformer<float>;
template class Transformer<double>;
template class Transformer<bf16>;

}  // namespace aq
