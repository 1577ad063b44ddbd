// test_training.cpp — the training loop end to end, in process: loss falls on real text, the same seed gives
// bit-identical losses, and train N ≡ train k + save + resume + train N−k, bit for bit.
#include <glob.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "runtime/data.h"
#include "runtime/path_lock.h"
#include "tests/test_util.h"
#include "train/outer_optimizer.h"
#include "train/trainer.h"

namespace aq {
namespace {

// Real English text: the fortunes corpus that scripts/install_deps.sh installs, else this repository's docs
// and sources (always present).
std::string real_text() {
  std::string text;
  for (const char* pattern : {"/usr/share/games/fortunes/*.u8", AQ_SOURCE_DIR "/*.md", AQ_SOURCE_DIR "/*/*.h"}) {
    glob_t g{};
    if (::glob(pattern, 0, nullptr, &g) == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) {
        std::ifstream f(g.gl_pathv[i], std::ios::binary);
        text.append(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
      }
    ::globfree(&g);
    if (text.size() > 200000) break;
  }
  return text;
}

class Training : public test::TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    const std::string text = real_text();
    ASSERT_GT(text.size(), 50000u);
    std::vector<uint16_t> tok(text.begin(), text.end());
    for (auto& t : tok) t &= 0xff;
    write_shard(dir_ + "/train_000.bin", tok);
    cfg_.layers = 2;
    cfg_.heads = 2;
    cfg_.dim = 32;
    cfg_.max_seq = 32;
    cfg_.seq = 31;
    cfg_.batch = 5;
    cfg_.steps = 6;
    cfg_.schedule.lr = 3e-3;
    cfg_.schedule.kind = "cosine";
    cfg_.schedule.warmup = 2;
    cfg_.schedule.min_lr = 3e-4;
    cfg_.data = dir_ + "/train_000.bin";
    cfg_.quiet = true;
    cfg_.threads = 2;
    cfg_.device = "cpu";    // the CPU trainer is what this suite tests, GPU or not
    cfg_.overwrite = true;  // the tests save to the same paths run after run (CheckpointPathGuard checks it off)
  }

  static std::vector<double> losses(const TrainResult& r) {
    std::vector<double> out;
    for (const auto& s : r.steps) out.push_back(s.loss);
    return out;
  }
  // All tensor bytes of a safetensors file, by name.
  static std::map<std::string, std::string> tensor_bytes(const std::string& path) {
    SafeTensorsReader f(path);
    std::map<std::string, std::string> out;
    for (const auto& [name, e] : f.entries())
      out[name] = std::string(reinterpret_cast<const char*>(f.bytes(name)), e.end - e.begin);
    return out;
  }

  // `base` trained whole, and trained 2 steps, saved and resumed with `resume_base`'s flags: the joined losses and
  // the final model and state are bit-identical. Returns the uninterrupted run's --save directory.
  std::string expect_resume_bit_identical(const TrainConfig& base, const TrainConfig& resume_base,
                                          const std::string& name) {
    TrainConfig full = base;
    full.save = dir_ + "/" + name + "_full";
    const auto all = losses(train(full, comm_));
    TrainConfig first = base;
    first.steps = 2;
    first.save = dir_ + "/" + name + "_part";
    const auto head = losses(train(first, comm_));
    TrainConfig rest = resume_base;
    rest.resume = first.save;
    rest.save = dir_ + "/" + name + "_resumed";
    const auto tail = losses(train(rest, comm_));
    EXPECT_EQ(head.size() + tail.size(), all.size());
    std::vector<double> joined = head;
    joined.insert(joined.end(), tail.begin(), tail.end());
    EXPECT_EQ(joined, all);
    EXPECT_EQ(tensor_bytes(test::saved_model(rest.save)), tensor_bytes(test::saved_model(full.save)));
    EXPECT_EQ(tensor_bytes(test::saved_state(rest.save)), tensor_bytes(test::saved_state(full.save)));
    return full.save;
  }

  TrainConfig cfg_;
  ParallelContext& comm_ = ParallelContext::local();
};

TEST_F(Training, LossFallsOnRealText) {
  cfg_.steps = 60;
  cfg_.schedule.kind = "constant";
  TrainResult r = train(cfg_, comm_);
  ASSERT_EQ(r.steps.size(), 60u);
  EXPECT_NEAR(r.steps.front().loss, std::log(256.0), 0.3);  // uniform over bytes at initialisation
  double last = 0;
  for (size_t i = 55; i < 60; ++i) last += r.steps[i].loss / 5;
  EXPECT_LT(last, r.steps.front().loss - 1.5) << "first " << r.steps.front().loss << ", last five " << last;
}

TEST_F(Training, SameSeedGivesBitIdenticalLosses) {
  const auto a = losses(train(cfg_, comm_));
  const auto b = losses(train(cfg_, comm_));
  EXPECT_EQ(a, b);
  cfg_.seed += 1;
  EXPECT_NE(losses(train(cfg_, comm_)), a);
}

TEST_F(Training, LlamaResumesBitIdenticallyAndSavesAHuggingFaceFolder) {
  // A fresh Llama from --model-config (GQA, untied head), saved at step 2 and resumed: bit-identical to the
  // uninterrupted run; each save is a Hugging Face folder (config.json beside model.safetensors) that loads again.
  {
    std::ofstream(dir_ + "/llama.json")
        << R"({"model_type": "llama", "hidden_size": 32, "intermediate_size": 44, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 32,
               "rms_norm_eps": 1e-5, "rope_theta": 1000.0, "tie_word_embeddings": false})";
  }
  TrainConfig base = test::without_shape_flags(cfg_);
  base.model_config = dir_ + "/llama.json";
  // No --model-config on the resumed part: the save's metadata carries the config.
  const std::string full = expect_resume_bit_identical(base, test::without_shape_flags(cfg_), "llama");
  const std::string model = test::saved_model(full);
  EXPECT_EQ(read_hf_config(model.substr(0, model.rfind('/')) + "/config.json"), read_hf_config(base.model_config));
  const SafeTensorsReader f(model);
  EXPECT_TRUE(f.has("model.layers.1.self_attn.k_proj.weight"));
  EXPECT_TRUE(f.has("lm_head.weight"));
  EXPECT_FALSE(f.has("model.layers.1.self_attn.qkv_proj.weight"));
}

TEST_F(Training, ResumeContinuesBitIdentically) { expect_resume_bit_identical(cfg_, cfg_, "gpt2"); }

TEST_F(Training, GradientAccumulationEqualsTheLargerBatch) {
  // K micro-batches of B sequences ≡ one step of K·B sequences: the same data (read as one K·B window), and
  // gradients that differ only in the order of summation (per micro-batch GEMMs, then added), so losses and
  // weights agree to fp32 rounding (the contract: not bit-identical, rel < 1e-5 / 1e-4).
  TrainConfig big = cfg_;
  big.batch = 6;
  big.save = dir_ + "/big";
  const TrainResult ref = train(big, comm_);
  const auto want = losses(ref);
  for (int K : {2, 3}) {
    TrainConfig acc = cfg_;
    acc.batch = 6 / K;
    acc.grad_accum = K;
    acc.save = dir_ + "/acc";
    const TrainResult got = train(acc, comm_);
    ASSERT_EQ(got.steps.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_LT(std::fabs(got.steps[i].loss - want[i]) / want[i], 1e-5) << "K " << K << " step " << i + 1;
      // The norm is scale-sensitive where AdamW and clipping are not: it catches a missing 1/K.
      const double gn = ref.steps[i].grad_norm;
      EXPECT_LT(std::fabs(got.steps[i].grad_norm - gn) / gn, 1e-5) << "K " << K << " step " << i + 1;
    }
    for (const auto& [name, err] : test::checkpoint_rel_errors(acc.save, big.save))
      EXPECT_LT(err, 3e-4) << "K " << K << " tensor " << name;
    // The same K twice: bit-identical (accumulation order is fixed).
    acc.save.clear();
    EXPECT_EQ(losses(train(acc, comm_)), losses(got)) << "K " << K;
  }
}

TEST_F(Training, StoppingEarlyKeepsTheScheduleAndResumesBitIdentically) {
  // A cosine run of 6 steps stopped after step 3 (by --stop-at, then by SIGTERM arriving during step 3) and
  // resumed: the schedule follows --steps throughout, so losses and the final files equal the uninterrupted run.
  TrainConfig full = cfg_;
  full.save = dir_ + "/full";
  const auto all = losses(train(full, comm_));
  for (const char* how : {"--stop-at", "SIGTERM"}) {
    TrainConfig first = cfg_;
    first.save = dir_ + "/stopped";
    if (std::string(how) == "--stop-at")
      first.stop_at = 3;
    else
      first.after_step = [](const StepRecord& r) {
        if (r.step == 2) std::raise(SIGTERM);  // arrives as step 2 ends: the run stops right after it
      };
    const TrainResult head = train(first, comm_);
    EXPECT_EQ(head.stopped_by, how);
    ASSERT_EQ(head.steps.size(), std::string(how) == "--stop-at" ? 3u : 2u) << how;
    TrainConfig rest = cfg_;
    rest.resume = first.save;
    rest.save = dir_ + "/resumed";
    const TrainResult tail = train(rest, comm_);
    EXPECT_TRUE(tail.stopped_by.empty());
    std::vector<double> joined = losses(head);
    for (double l : losses(tail)) joined.push_back(l);
    EXPECT_EQ(joined, all) << how;
    EXPECT_EQ(tensor_bytes(test::saved_model(rest.save)), tensor_bytes(test::saved_model(full.save))) << how;
  }
}

TEST_F(Training, ResumeTakesTheNewestIntactSave) {
  // Saves whose files were mixed, truncated or damaged are skipped, each named with its reason; naming one of
  // them directly is refused with that reason; the newest intact save is taken and its steps replayed.
  TrainConfig a = cfg_;
  a.steps = 4;
  a.save_every = 1;
  a.keep = 0;
  a.save = dir_ + "/newest";
  const auto all = losses(train(a, comm_));
  TrainConfig b = a;
  b.seed += 1;
  b.save = dir_ + "/newest_other";
  train(b, comm_);
  const auto save = [&](int step) { return str(a.save, "/", save_dir_name(step)); };
  namespace fs = std::filesystem;
  // step 4: the state of another run's step-4 save; step 3: a tensor's bytes flipped; step 2: truncated.
  fs::copy_file(b.save + "/step-00000004/state.safetensors", save(4) + "/state.safetensors",
                fs::copy_options::overwrite_existing);
  {
    const SafeTensorsReader m(save(3) + "/model.safetensors");
    const size_t at = m.entries().at("wte.weight").begin + 8 + 17;  // inside the data section (past the header)
    std::fstream f(save(3) + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    std::string head(8, '\0');
    f.read(head.data(), 8);
    uint64_t n = 0;
    std::memcpy(&n, head.data(), 8);
    f.seekg(static_cast<std::streamoff>(at + n));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    f.seekp(static_cast<std::streamoff>(at + n));
    f.write(&c, 1);
  }
  fs::resize_file(save(2) + "/state.safetensors", fs::file_size(save(2) + "/state.safetensors") - 4);
  TrainConfig r = cfg_;
  r.steps = 4;
  r.resume = a.save;
  const TrainResult got = train(r, comm_);  // from step 1
  ASSERT_EQ(got.steps.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(got.steps[i].loss, all[i + 1]) << "step " << i + 2;
  const auto refused = [&](int step, const std::string& why) {
    TrainConfig one = r;
    one.resume = save(step);
    test::expect_error([&] { train(one, comm_); }, {"--resume " + save(step) + " is not a usable save", why});
  };
  refused(4, "belongs to another save than its manifest");
  refused(3, "tensor \"wte.weight\" is damaged");
  refused(2, "bytes, the manifest says");
  fs::remove_all(save(1));
  test::expect_error([&] { train(r, comm_); }, {"--resume " + a.save + " holds no intact save: step-00000004: "});
  // The single-file layout of earlier versions: a model file and FILE.state from two different saves.
  const std::string legacy = dir_ + "/legacy.safetensors";
  fs::copy_file(b.save + "/step-00000004/model.safetensors", legacy, fs::copy_options::overwrite_existing);
  fs::copy_file(b.save + "/step-00000003/state.safetensors", legacy + ".state", fs::copy_options::overwrite_existing);
  r.resume = legacy;
  test::expect_error([&] { train(r, comm_); }, {"belong to different saves"});
}

TEST_F(Training, JsonLogHasOneLinePerStepAndValidationLines) {
  cfg_.log = dir_ + "/log.jsonl";
  cfg_.val_data = cfg_.data;
  cfg_.eval_every = 3;
  cfg_.eval_batches = 2;
  TrainResult r = train(cfg_, comm_);
  std::ifstream f(cfg_.log);
  std::string line;
  int64_t expect_step = 1;
  int val_lines = 0;
  while (std::getline(f, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.contains("split")) {
      EXPECT_EQ(j["split"], "val");
      ++val_lines;
      continue;
    }
    EXPECT_EQ(j["step"].get<int64_t>(), expect_step);
    EXPECT_EQ(j["loss"].get<double>(), r.steps[static_cast<size_t>(expect_step - 1)].loss);
    for (const char* key : {"lr", "grad_norm", "ms", "tokens_per_s"}) EXPECT_TRUE(j.contains(key)) << key;
    ++expect_step;
  }
  EXPECT_EQ(expect_step, 7);
  EXPECT_EQ(val_lines, 2);  // steps 3 and 6
  EXPECT_EQ(r.val_losses.size(), 2u);
}

TEST_F(Training, CheckpointPathGuard) {
  // A fresh run does not replace another run's saves without --overwrite; the same run (resumed from the
  // directory, or from a copy elsewhere saving back to its own) may; a held directory is refused with the holder's
  // pid; a file (the single-file layout) is refused with the new layout named.
  namespace fs = std::filesystem;
  TrainConfig a = cfg_;
  a.steps = 2;
  a.overwrite = false;
  a.save = dir_ + "/guard";
  fs::remove_all(a.save);
  train(a, comm_);
  const auto refused = [&](const TrainConfig& c, const std::string& want) {
    test::expect_error([&] { train(c, comm_); }, {want});
  };
  refused(a, "already holds saves of another run (newest: step 2); continue that run with --resume");
  TrainConfig again = a;
  again.resume = a.save;  // the same run, continued in place
  again.steps = 3;
  EXPECT_EQ(train(again, comm_).steps.size(), 1u);
  TrainConfig copy = again;  // resumed from a copy elsewhere, saving back to its own directory: still this run
  fs::remove_all(dir_ + "/guard_copy");
  fs::copy(a.save, dir_ + "/guard_copy", fs::copy_options::recursive);
  copy.resume = dir_ + "/guard_copy";
  copy.steps = 4;
  EXPECT_EQ(train(copy, comm_).steps.size(), 1u);
  // An older save of this run resumed into a directory that holds later ones: refused (they would be dropped).
  TrainConfig older = copy;
  older.resume = a.save + "/step-00000003";
  older.steps = 5;
  refused(older, "holds a later save of this run (" + a.save + "/step-00000004) than the one resumed (step 3)");
  TrainConfig other = a;
  other.overwrite = true;
  EXPECT_EQ(train(other, comm_).steps.size(), 2u);
  ASSERT_EQ(list_saves(a.save).size(), 1u);  // the other run's saves were removed at the start
  EXPECT_EQ(list_saves(a.save)[0].step, 2);
  // A file, or a name in the single-file layout.
  TrainConfig junk = a;
  junk.save = dir_ + "/junk.bin";
  { std::ofstream(junk.save) << "not a directory"; }
  refused(junk, "is a file, but --save takes a checkpoint directory");
  junk.save = dir_ + "/model.safetensors";
  refused(junk, "looks like a file name, but --save takes a checkpoint directory");
  refused(junk, "use e.g. --save " + dir_ + "/model");
  // A live writer holds the directory: refused with its pid; the lock file goes away with its holder.
  {
    PathLock held(a.save, "--save", a.save + "/.lock");
    refused(a, str("is being written by another run (pid ", ::getpid(), " on host "));
  }
  EXPECT_FALSE(fs::exists(a.save + "/.lock"));
  // What writers that died left is removed at the next start, whoever they were (the lock is held, so no pid is
  // asked): a hidden save is not committed even when all its files are there.
  namespace fs = std::filesystem;
  const std::string two = a.save + "/step-00000002";
  const std::string complete = a.save + "/.saving-step-00000003.12345",
                    unfinished = a.save + "/.saving-step-00000009.1",
                    removing = str(a.save, "/.removing-step-00000001.", ::getpid());
  fs::copy(two, complete);
  for (const std::string& d : {unfinished, removing}) {
    fs::create_directories(d);
    std::ofstream(d + "/model.safetensors") << "half a model";
  }
  EXPECT_EQ(recover_saves(a.save).size(), 3u);
  EXPECT_TRUE(check_save(two).empty()) << check_save(two);
  for (const std::string& d : {complete, unfinished, removing}) EXPECT_FALSE(fs::exists(d)) << d;
  // A list of saves being dropped by --overwrite: ignored by readers at once, removed at the next start.
  { std::ofstream(a.save + "/.dropped") << "[\"" << list_saves(a.save).at(0).checkpoint_id << "\"]"; }
  EXPECT_TRUE(list_saves(a.save).empty());
  test::expect_error([&] { resolve_checkpoint(a.save, "--resume"); }, {"holds no checkpoint"});
  recover_saves(a.save);
  EXPECT_FALSE(fs::exists(two));
  EXPECT_FALSE(fs::exists(a.save + "/.dropped"));
}

TEST_F(Training, ResumeRefusesMalformedStateMetadata) {
  // The checksums cover tensor bytes only: a damaged JSON value in the state's metadata must still be one line
  // naming the file and the key, not the JSON library's message.
  TrainConfig a = cfg_;
  a.steps = 2;
  a.save = dir_ + "/meta";
  train(a, comm_);
  // A save's files are checked against its manifest first (sizes, ids, checksums), so the damage is made to a
  // copy in the single-file layout, which is read without one.
  const std::string legacy = dir_ + "/meta.safetensors", sp = legacy + ".state";
  std::filesystem::copy_file(test::saved_model(a.save), legacy, std::filesystem::copy_options::overwrite_existing);
  std::filesystem::copy_file(test::saved_state(a.save), sp, std::filesystem::copy_options::overwrite_existing);
  const auto rewrite = [&](const std::string& key, const std::string& value) {
    const SafeTensorsReader f(sp);
    std::vector<NamedTensor> tensors;
    for (const auto& [name, e] : f.entries())
      tensors.push_back({name, Tensor(const_cast<uint8_t*>(f.bytes(name)), e.dtype, e.shape)});
    std::map<std::string, std::string> meta = f.metadata();
    meta[key] = value;
    write_safetensors(sp + ".new", tensors, meta);
    std::filesystem::rename(sp + ".new", sp);
  };
  TrainConfig rest = cfg_;
  rest.resume = legacy;
  rest.steps = 3;
  rewrite("rng_state", "[1, 2");
  test::expect_error([&] { train(rest, comm_); }, {sp, "\"rng_state\" in the metadata is missing or malformed"});
  rewrite("rng_state", "[1, 2]");
  test::expect_error([&] { train(rest, comm_); }, {sp, "\"rng_state\" in the metadata has 2 words, not 4"});
}

TEST(OuterOptimizer, NesterovMatchesTheClosedFormSequence) {
  // torch.optim.SGD(lr, momentum=mu, nesterov=True) on θ with "gradients" Δ̄_t, written out in double:
  // m_t = mu·m_{t−1} + Δ̄_t;  θ_t = θ_{t−1} − lr·(Δ̄_t + mu·m_t). Here Δ̄_t = sum_t·inv with a sum over 3 ranks.
  const float lr = 0.7f, mu = 0.9f, inv = 1.0f / 3;
  const std::vector<float> sums = {0.3f, -0.12f, 0.05f, 0.6f};
  float theta = 1.5f, m = 0.0f, local = 0.0f;
  double th = 1.5, mm = 0.0;
  for (float sum : sums) {
    outer_nesterov_step(&theta, &m, &local, &sum, 1, inv, lr, mu);
    const double g = static_cast<double>(sum) / 3;
    mm = 0.9 * mm + g;
    th -= 0.7 * (g + 0.9 * mm);
    EXPECT_NEAR(theta, th, 1e-6);
    EXPECT_NEAR(m, mm, 1e-6);
    EXPECT_EQ(local, theta);  // every replica restarts from θ_global
  }
  // momentum 0, lr 1: plain averaging, θ_global − mean(θ_global − θ_c) = mean θ_c.
  float g = 2.0f, m0 = 0.0f, l = 0.0f;
  const float d = (2.0f - 1.0f) + (2.0f - 1.5f);  // two replicas at 1.0 and 1.5
  outer_nesterov_step(&g, &m0, &l, &d, 1, 0.5f, 1.0f, 0.0f);
  EXPECT_FLOAT_EQ(g, 1.25f);
  // With a mix (overlapped syncs) the replica keeps that share of its own values.
  float g2 = 2.0f, m2 = 0.0f, l2 = 1.0f;
  const float d2 = 1.0f;
  outer_nesterov_step(&g2, &m2, &l2, &d2, 1, 1.0f, 1.0f, 0.0f, 0.25f);
  EXPECT_FLOAT_EQ(g2, 1.0f);
  EXPECT_FLOAT_EQ(l2, 0.25f * 1.0f + 0.75f * 1.0f);
  l2 = 3.0f;
  outer_nesterov_step(&g2, &m2, &l2, &d2, 1, 1.0f, 1.0f, 0.0f, 0.25f);  // θ_global 1 → 0
  EXPECT_FLOAT_EQ(l2, 0.25f * 3.0f + 0.75f * 0.0f);
}

TEST(OuterOptimizer, StreamingScheduleSyncsEveryFragmentOncePerH) {
  for (int64_t H : {1, 4, 7, 50})
    for (int F : {1, 2, 3, 4, 9}) {
      std::vector<int> syncs_at_step(static_cast<size_t>(H), 0);
      for (int f = 0; f < F; ++f) {
        int count = 0;
        for (int64_t t = 1; t <= 3 * H; ++t)  // three windows of H steps
          if (fragment_syncs_at(f, F, H, t)) {
            ++count;
            ++syncs_at_step[static_cast<size_t>(t % H)];
          }
        EXPECT_EQ(count, 3) << "H " << H << " F " << F << " fragment " << f;
      }
      // Staggered: with F ≤ H no step syncs two fragments (the WAN carries 1/F of the model at a time).
      if (F <= H) {
        for (int k : syncs_at_step) EXPECT_LE(k, 3) << "H " << H << " F " << F;
      }
    }
}

TEST(OuterOptimizer, PacedCentresTrainTheirShareSpreadEvenly) {
  // A centre with a of every H steps trains exactly a per window, at most ⌈H/a⌉ steps apart, and the last step
  // of every window is a trained one (so a centre's final replica is never stale at a whole-model sync).
  for (int64_t H : {1, 4, 7, 50})
    for (int64_t a = 1; a <= H; ++a) {
      int64_t trained = 0, last = -1, gap = 0;
      for (int64_t s = 0; s < 3 * H; ++s)
        if (inner_step_active(a, H, s)) {
          ++trained;
          gap = std::max(gap, s - last);
          last = s;
        }
      EXPECT_EQ(trained, 3 * a) << "H " << H << " a " << a;
      EXPECT_LE(gap, (H + a - 1) / a) << "H " << H << " a " << a;
      EXPECT_TRUE(inner_step_active(a, H, H - 1)) << "H " << H << " a " << a;
    }
}

TEST(OuterOptimizer, TokenWeightedAverageMatchesClosedForm) {
  // Centre A: 2 DP ranks, 4 inner steps, change 1.0; centre B: 1 rank, 2 inner steps, change 3.0. Each rank sends
  // active·Δ, the exchange sums over ranks: 2·4·1 + 1·2·3 = 14, and the token-weighted mean is 14 / (2·4 + 1·2).
  const double scale = token_weighted_scale({2, 1}, {4, 2});
  EXPECT_DOUBLE_EQ(scale, 1.0 / 10);
  const float sum = 2 * 4 * 1.0f + 1 * 2 * 3.0f;
  float theta = 5.0f, m = 0.0f, local = 0.0f;
  outer_nesterov_step(&theta, &m, &local, &sum, 1, static_cast<float>(scale), 1.0f, 0.0f);
  EXPECT_FLOAT_EQ(theta, 5.0f - (2 * 4 * 1.0f + 1 * 2 * 3.0f) / (2 * 4 + 1 * 2));  // 3.6
  EXPECT_FLOAT_EQ(local, theta);
  // Equal counts: the plain mean over ranks; nobody trained: 0 (the caller averages unweighted).
  EXPECT_DOUBLE_EQ(token_weighted_scale({2, 2}, {5, 5}) * 5, 1.0 / 4);
  EXPECT_EQ(token_weighted_scale({2, 1}, {0, 0}), 0.0);
}

TEST(LrSchedule, WarmupThenCosineToMinLr) {
  LrSchedule s{"cosine", 1.0, 0.1, 4, 14};
  EXPECT_DOUBLE_EQ(s.at(0), 0.25);
  EXPECT_DOUBLE_EQ(s.at(3), 1.0);
  EXPECT_DOUBLE_EQ(s.at(4), 1.0);
  EXPECT_NEAR(s.at(9), 0.55, 1e-12);  // halfway through the decay
  EXPECT_NEAR(s.at(14), 0.1, 1e-12);
  LrSchedule c{"constant", 0.5, 0.0, 3, 10};
  EXPECT_EQ(c.at(0), 0.5);
  EXPECT_EQ(c.at(9), 0.5);
}

}  // namespace
}  // namespace aq
