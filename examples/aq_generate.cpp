// aq-generate — sample text from a GPT-2 checkpoint (temperature, top-k).
//
//   build/bin/aq-generate --model out/model.safetensors --prompt "Q: " --tokens 200
//   build/bin/aq-generate --model gpt2.safetensors --tokenizer gpt2 --vocab data/gpt2-vocab --prompt "The"
// Byte-level models (V = 256) and models with a --tokenizer print text; others print token ids.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <numeric>

#include "examples/main_guard.h"
#include "model/transformer.h"
#include "ops/plugin_loader.h"
#include "runtime/blas_setup.h"
#include "runtime/rng.h"
#include "runtime/tokenizer.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
  aq::ensure_blas_kernels(argv);  // first: may re-execute this program with the right OpenBLAS kernels
  std::string model_path, prompt = "\n";
  std::string tokenizer, vocab;
  int tokens = 200, top_k = 40, heads = 0, threads = 0;
  double temperature = 0.8;
  uint64_t seed = 42;
  CLI::App app{"aq-generate: sample from a GPT-2 or Llama checkpoint"};
  app.add_option(
         "--model", model_path,
         "GPT-2 or Llama safetensors file, a Hugging Face model folder, a save (DIR/step-N) or a --save directory (its "
         "newest intact save)")
      ->required();
  app.add_option("--prompt", prompt, "Text to continue (byte-level models, or with --tokenizer)")
      ->capture_default_str();
  app.add_option("--tokenizer", tokenizer,
                 "gpt2 (with --vocab) or a Hugging Face tokenizer.json: prompt and output as text");
  app.add_option("--vocab", vocab, "Directory with GPT-2's encoder.json and vocab.bpe (scripts/fetch_gpt2_vocab.sh)");
  app.add_option("--tokens", tokens, "Tokens to generate")->capture_default_str();
  app.add_option("--temperature", temperature, "Sampling temperature (0 = greedy)")->capture_default_str();
  app.add_option("--top-k", top_k, "Sample among the k most likely tokens (0 = all)")->capture_default_str();
  app.add_option("--seed", seed, "Sampling seed")->capture_default_str();
  app.add_option("--heads", heads, "n_head, when the checkpoint's metadata lacks it");
  app.add_option("--threads", threads, "CPU threads (0 = all cores)")->capture_default_str();
  std::vector<std::string> plugins;
  app.add_option("--plugin", plugins,
                 "Load an operator plugin (.so) the model uses (its config.json's activation_function); repeatable. "
                 "AQ_PLUGIN_PATH is read too");

  return aq::run_main("aq-generate", app, argc, argv, [&] {
    AQ_CHECK(tokens >= 1, "--tokens must be >= 1 (got ", tokens, ")");
    AQ_CHECK(temperature >= 0, "--temperature must be >= 0 (got ", temperature, ")");
    AQ_CHECK(top_k >= 0, "--top-k must be >= 0 (got ", top_k, ")");
    aq::configure_threads(threads);
    aq::ops::load_plugins(plugins);
    model_path = aq::resolve_checkpoint(model_path, "--model").model;
    aq::SafeTensorsReader file(model_path);
    const aq::ModelConfig cfg = aq::read_checkpoint_config(file, heads);
    std::unique_ptr<aq::Tokenizer> tok;
    if (!tokenizer.empty() && tokenizer != "bytes") {
      tok = std::make_unique<aq::Tokenizer>(aq::Tokenizer::load(tokenizer, vocab));
      // GPT-2 checkpoints pad V (50257 -> 50304 in llm.c): the tokenizer's ids must fit, not match.
      AQ_CHECK(tok->vocab_size() <= cfg.vocab_size, tokenizer, " has ", tok->vocab_size(), " ids but the model ",
               model_path, " only ", cfg.vocab_size, "; use the tokenizer the model was trained with");
    }
    const bool bytes = !tok && cfg.vocab_size == 256;

    std::vector<int32_t> ctx;
    if (tok) {
      ctx = tok->encode(prompt);
      if (ctx.empty() && tok->eot_id() >= 0) ctx.push_back(tok->eot_id());
    } else {
      for (unsigned char ch : prompt) ctx.push_back(ch % cfg.vocab_size);
    }
    if (ctx.empty()) ctx.push_back(0);
    // Activations for the longest window this run will use, not the whole context (a Llama's may be 128k).
    const int window = static_cast<int>(std::min<int64_t>(cfg.max_seq, static_cast<int64_t>(ctx.size()) + tokens));
    aq::Transformer<float> model(cfg, 1, window);
    model.load(file);
    if (bytes || tok) std::fwrite(prompt.data(), 1, prompt.size(), stdout);
    aq::Rng rng(seed);
    std::vector<float> logits(static_cast<size_t>(cfg.vocab_size));
    std::vector<int> order(logits.size());
    for (int i = 0; i < tokens; ++i) {
      // Keep the most recent max_seq tokens: the model has no positions beyond that.
      const int t = std::min<int>(static_cast<int>(ctx.size()), window);
      model.last_logits(ctx.data() + ctx.size() - t, t, logits.data());
      std::iota(order.begin(), order.end(), 0);
      const int k = top_k > 0 ? std::min(top_k, cfg.vocab_size) : cfg.vocab_size;
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int a, int b) { return logits[a] > logits[b]; });
      int next = order[0];
      if (temperature > 0) {
        std::vector<double> p(static_cast<size_t>(k));
        double sum = 0;
        for (int j = 0; j < k; ++j) sum += p[j] = std::exp((logits[order[j]] - logits[order[0]]) / temperature);
        double r = rng.uniform() * sum;
        for (int j = 0; j < k; ++j) {
          next = order[j];
          if ((r -= p[j]) <= 0) break;
        }
      }
      ctx.push_back(next);
      if (tok) {
        // Padding ids past the tokenizer's vocabulary (never trained to be likely) print as <|id|>.
        const std::string text = next < tok->vocab_size() ? tok->token_bytes(next) : "<|" + std::to_string(next) + "|>";
        std::fwrite(text.data(), 1, text.size(), stdout);
      } else if (bytes)
        std::fputc(next, stdout);
      else
        std::printf("%d ", next);
      std::fflush(stdout);
    }
    std::printf("\n");
  });
}
