// test_safetensors.cpp — the safetensors reader and writer: F32/F64 round trips with metadata, BF16/F16
// decoding, one clear aq::Error (naming file and problem) for each kind of damaged file, and GPT-2 checkpoint
// loading: bit-exact weights, missing/misshapen/integer tensors, Hugging Face names, configuration from metadata.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "runtime/rng.h"
#include "runtime/safetensors.h"
#include "tests/test_util.h"

namespace aq {
namespace {

using test::expect_error;

class SafeTensors : public test::TempDirTest {
 protected:

  // A file made by hand: 8-byte little-endian header length, the header text, then `data`.
  std::string write_raw(const std::string& name, const std::string& header, const std::vector<uint8_t>& data,
                        uint64_t header_len = UINT64_MAX) {
    const std::string p = path(name);
    std::ofstream f(p, std::ios::binary);
    const uint64_t len = header_len == UINT64_MAX ? header.size() : header_len;
    f.write(reinterpret_cast<const char*>(&len), 8);
    f.write(header.data(), static_cast<std::streamsize>(header.size()));
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    return p;
  }

};

template <typename T>
std::vector<T> random_values(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(rng.normal() * 3.0);
  return v;
}

std::vector<uint8_t> u16_bytes(const std::vector<uint16_t>& v) {
  std::vector<uint8_t> out(2 * v.size());
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// ---- round trips ----------------------------------------------------------------------------------------------

TEST_F(SafeTensors, RoundTripF32AndF64WithMetadata) {
  std::vector<float> a = random_values<float>(3 * 5 * 7, 1);
  a[0] = -0.0f;
  a[1] = std::numeric_limits<float>::denorm_min();
  a[2] = std::numeric_limits<float>::infinity();
  a[3] = std::numeric_limits<float>::quiet_NaN();
  a[4] = std::numeric_limits<float>::max();
  std::vector<double> b = random_values<double>(11 * 1 * 3, 2);
  b[0] = -std::numeric_limits<double>::infinity();
  b[1] = 1e-310;  // subnormal
  std::vector<float> c = {42.5f};
  std::vector<double> d = random_values<double>(13, 3);
  const std::map<std::string, std::string> meta = {{"n_layer", "3"}, {"note", "hello \"world\" ü"}, {"empty", ""}};
  const std::vector<NamedTensor> tensors = {
      {"a.odd", Tensor(a.data(), DType::F32, {3, 5, 7})}, {"b.f64", Tensor(b.data(), DType::F64, {11, 1, 3})},
      {"c.scalar", Tensor(c.data(), DType::F32, {})},     {"d.vec", Tensor(d.data(), DType::F64, {13})},
      {"e.empty", Tensor(nullptr, DType::F32, {0, 4})},
  };
  const std::string p = path("rt.safetensors");
  write_safetensors(p, tensors, meta);

  // The header length is a multiple of 8, so the data section starts 8-byte aligned, and the file is exactly
  // header + data.
  std::ifstream f(p, std::ios::binary | std::ios::ate);
  const auto file_size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  uint64_t header_len = 0;
  f.read(reinterpret_cast<char*>(&header_len), 8);
  EXPECT_EQ(header_len % 8, 0u);
  const uint64_t data_bytes = 4 * a.size() + 8 * b.size() + 4 + 8 * d.size();
  EXPECT_EQ(file_size, 8 + header_len + data_bytes);

  SafeTensorsReader r(p);
  EXPECT_EQ(r.path(), p);
  EXPECT_EQ(r.metadata(), meta);
  ASSERT_EQ(r.entries().size(), 5u);
  EXPECT_EQ(r.entry("a.odd").dtype, DType::F32);
  EXPECT_EQ(r.entry("a.odd").shape, (Shape{3, 5, 7}));
  EXPECT_EQ(r.entry("b.f64").dtype, DType::F64);
  EXPECT_EQ(r.entry("c.scalar").shape, Shape{});
  EXPECT_EQ(r.entry("e.empty").begin, r.entry("e.empty").end);
  // Tensors are stored in the given order, back to back.
  EXPECT_EQ(r.entry("a.odd").begin, 0u);
  EXPECT_EQ(r.entry("b.f64").begin, r.entry("a.odd").end);

  std::vector<float> a2(a.size());
  r.read<float>("a.odd", {3, 5, 7}, a2.data());
  EXPECT_EQ(std::memcmp(a.data(), a2.data(), 4 * a.size()), 0);
  std::vector<double> b2(b.size());
  r.read<double>("b.f64", {11, 1, 3}, b2.data());
  EXPECT_EQ(std::memcmp(b.data(), b2.data(), 8 * b.size()), 0);
  float c2 = 0;
  r.read<float>("c.scalar", {}, &c2);
  EXPECT_EQ(c2, 42.5f);
  std::vector<double> d2(d.size());
  r.read<double>("d.vec", {13}, d2.data());
  EXPECT_EQ(std::memcmp(d.data(), d2.data(), 8 * d.size()), 0);
  EXPECT_EQ(std::memcmp(r.bytes("d.vec"), d.data(), 8 * d.size()), 0);

  // F32 widened to double and F64 narrowed to float convert value by value.
  std::vector<double> a64(a.size());
  r.read<double>("a.odd", {3, 5, 7}, a64.data());
  for (size_t i = 5; i < a.size(); ++i) EXPECT_EQ(a64[i], static_cast<double>(a[i]));
  std::vector<float> d32(d.size());
  r.read<float>("d.vec", {13}, d32.data());
  for (size_t i = 0; i < d.size(); ++i) EXPECT_EQ(d32[i], static_cast<float>(d[i]));
}

TEST_F(SafeTensors, RewriteReplacesFileAndLeavesNoTemporary) {
  std::vector<float> x = {1, 2, 3}, y = {4, 5};
  const std::string p = path("w.safetensors");
  write_safetensors(p, {{"x", Tensor(x.data(), DType::F32, {3})}}, {});
  write_safetensors(p, {{"y", Tensor(y.data(), DType::F32, {2})}}, {{"k", "v"}});
  SafeTensorsReader r(p);
  EXPECT_FALSE(r.has("x"));
  EXPECT_TRUE(r.has("y"));
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) {
    ++files;
    EXPECT_EQ(e.path().filename().string(), "w.safetensors");
  }
  EXPECT_EQ(files, 1u);
}

TEST_F(SafeTensors, WriteToMissingDirectoryFailsWithOneLine) {
  std::vector<float> x = {1};
  expect_error(
      [&] {
        write_safetensors(path("no/such/dir/x.safetensors"), {{"x", Tensor(x.data(), DType::F32, {1})}}, {});
      },
      {"cannot write", "no/such/dir/x.safetensors"});
}

TEST_F(SafeTensors, DecodesBF16AndF16) {
  // BF16 is the top half of an IEEE float.
  const std::vector<uint16_t> bf16 = {0x3F80, 0xC000, 0x3FC0, 0x4049, 0x0000, 0x8000, 0x7F80, 0xFF80};
  const std::vector<float> bf16_want = {1.0f, -2.0f, 1.5f, 3.140625f, 0.0f, -0.0f, INFINITY, -INFINITY};
  // F16: normal, negative, 1/3 rounded, largest, smallest normal, smallest subnormal, -inf, NaN.
  const std::vector<uint16_t> f16 = {0x3C00, 0xC000, 0x3555, 0x7BFF, 0x0400, 0x0001, 0xFC00, 0x7E00};
  const std::vector<double> f16_want = {
      1.0, -2.0, 0.333251953125, 65504.0, std::ldexp(1.0, -14), std::ldexp(1.0, -24), -INFINITY, NAN};
  std::vector<uint8_t> data = u16_bytes(bf16), f16b = u16_bytes(f16);
  data.insert(data.end(), f16b.begin(), f16b.end());
  const std::string p = write_raw("half.safetensors",
                                  R"({"b":{"dtype":"BF16","shape":[2,4],"data_offsets":[0,16]},)"
                                  R"("h":{"dtype":"F16","shape":[8],"data_offsets":[16,32]}})",
                                  data);
  SafeTensorsReader r(p);
  std::vector<float> b(8);
  r.read<float>("b", {2, 4}, b.data());
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(b[i], bf16_want[i]) << "BF16 element " << i;
  EXPECT_TRUE(std::signbit(b[5]));
  std::vector<double> h(8);
  r.read<double>("h", {8}, h.data());
  for (size_t i = 0; i < 7; ++i) EXPECT_EQ(h[i], f16_want[i]) << "F16 element " << i;
  EXPECT_TRUE(std::isnan(h[7]));
  std::vector<float> hf(8);
  r.read<float>("h", {8}, hf.data());
  EXPECT_EQ(hf[2], 0.333251953125f);
}

// ---- damaged files --------------------------------------------------------------------------------------------

TEST_F(SafeTensors, FileShorterThanEightBytes) {
  const std::string p = path("short.safetensors");
  std::ofstream(p, std::ios::binary) << "abc";
  expect_error([&] { SafeTensorsReader r(p); }, {p, "3 bytes", "8-byte header length"});
  const std::string empty = path("empty.safetensors");
  std::ofstream(empty, std::ios::binary).flush();
  expect_error([&] { SafeTensorsReader r(empty); }, {empty, "0 bytes"});
}

TEST_F(SafeTensors, MissingFile) {
  expect_error([&] { SafeTensorsReader r(path("nope.safetensors")); }, {"cannot open", "nope.safetensors"});
}

TEST_F(SafeTensors, HeaderLengthLargerThanFile) {
  const std::string p = write_raw("len.safetensors", "{}", {}, 1000);
  expect_error([&] { SafeTensorsReader r(p); }, {p, "header length 1000", "10 bytes"});
  const std::string huge = write_raw("huge.safetensors", "{}", {}, UINT64_MAX - 1);
  expect_error([&] { SafeTensorsReader r(huge); }, {huge, "header length", "does not fit"});
  const std::string zero = write_raw("zero.safetensors", "{}", {}, 0);
  expect_error([&] { SafeTensorsReader r(zero); }, {zero, "header length 0"});
}

TEST_F(SafeTensors, JsonDoesNotParse) {
  const std::string p = write_raw("json.safetensors", R"({"a": {"dtype": "F32",)", {});
  expect_error([&] { SafeTensorsReader r(p); }, {p, "JSON does not parse"});
}

TEST_F(SafeTensors, HeaderNotAnObject) {
  const std::string p = write_raw("arr.safetensors", "[1, 2, 3]", {});
  expect_error([&] { SafeTensorsReader r(p); }, {p, "expected a JSON object"});
}

TEST_F(SafeTensors, TensorMissingDataOffsets) {
  const std::string p =
      write_raw("nooff.safetensors", R"({"w":{"dtype":"F32","shape":[2]}})", {0, 0, 0, 0, 0, 0, 0, 0});
  expect_error([&] { SafeTensorsReader r(p); }, {p, "\"w\"", "data_offsets"});
  const std::string p3 = write_raw("off3.safetensors", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})",
                                   std::vector<uint8_t>(8));
  expect_error([&] { SafeTensorsReader r(p3); }, {p3, "\"w\"", "data_offsets"});
  const std::string neg = write_raw("neg.safetensors", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})",
                                    std::vector<uint8_t>(8));
  expect_error([&] { SafeTensorsReader r(neg); }, {neg, "\"w\"", "data_offsets"});
  const std::string shape = write_raw("shape.safetensors", R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
                                      std::vector<uint8_t>(8));
  expect_error([&] { SafeTensorsReader r(shape); }, {shape, "\"w\"", "bad shape"});
}

TEST_F(SafeTensors, DataOffsetsOutsideTruncatedFile) {
  // The header promises 24 bytes; the file stops after 16.
  const std::string p = write_raw("trunc.safetensors", R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})",
                                  std::vector<uint8_t>(16));
  expect_error([&] { SafeTensorsReader r(p); }, {p, "\"w\"", "[0, 24)", "16-byte data section", "truncated"});
  const std::string rev = write_raw("rev.safetensors", R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})",
                                    std::vector<uint8_t>(16));
  expect_error([&] { SafeTensorsReader r(rev); }, {rev, "\"w\"", "[8, 4)"});
}

TEST_F(SafeTensors, DataOffsetsDisagreeWithShapeAndDtype) {
  const std::string p = write_raw("size.safetensors", R"({"w":{"dtype":"F64","shape":[3],"data_offsets":[0,20]}})",
                                  std::vector<uint8_t>(24));
  expect_error([&] { SafeTensorsReader r(p); }, {p, "\"w\"", "[3]", "F64", "needs 24 bytes", "span 20"});
}

TEST_F(SafeTensors, OverlappingTensors) {
  const std::string p = write_raw("overlap.safetensors",
                                  R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                  std::vector<uint8_t>(16));
  expect_error([&] { SafeTensorsReader r(p); }, {p, "\"a\"", "\"b\"", "overlap"});
  // An empty tensor sorted between two overlapping ones must not hide the overlap.
  const std::string q = write_raw("overlap2.safetensors",
                                  R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]},)"
                                  R"("b":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                                  R"("c":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}})",
                                  std::vector<uint8_t>(32));
  expect_error([&] { SafeTensorsReader r(q); }, {q, "\"a\"", "\"c\"", "overlap"});
  // Nested ranges three deep: c lies inside a but not next to it once sorted.
  const std::string n = write_raw("overlap3.safetensors",
                                  R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]},)"
                                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
                                  R"("c":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})",
                                  std::vector<uint8_t>(32));
  expect_error([&] { SafeTensorsReader r(n); }, {n, "overlap"});
  // Adjacent and empty tensors are fine.
  const std::string ok = write_raw("adjacent.safetensors",
                                   R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                   R"("e":{"dtype":"F32","shape":[0],"data_offsets":[8,8]},)"
                                   R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                   std::vector<uint8_t>(16));
  EXPECT_NO_THROW(SafeTensorsReader r(ok));
}

TEST_F(SafeTensors, UnknownDtype) {
  const std::string p = write_raw("dtype.safetensors", R"({"w":{"dtype":"Q4_K","shape":[2],"data_offsets":[0,8]}})",
                                  std::vector<uint8_t>(8));
  expect_error([&] { SafeTensorsReader r(p); }, {p, "\"w\"", "unsupported dtype \"Q4_K\""});
}

TEST_F(SafeTensors, BadMetadataAndReadErrors) {
  const std::string p = write_raw("meta.safetensors",
                                  R"({"__metadata__":[1],"w":{"dtype":"F32","shape":[2],)"
                                  R"("data_offsets":[0,8]}})",
                                  std::vector<uint8_t>(8));
  expect_error([&] { SafeTensorsReader r(p); }, {p, "__metadata__"});

  const std::string q = write_raw("ints.safetensors", R"({"i":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})",
                                  std::vector<uint8_t>(8));
  SafeTensorsReader r(q);
  std::vector<float> out(2);
  expect_error([&] { r.read<float>("i", {2}, out.data()); }, {q, "\"i\"", "I32", "floating-point"});
  expect_error([&] { r.read<float>("missing", {2}, out.data()); }, {q, "missing tensor \"missing\""});
  expect_error([&] { r.read<float>("i", {1, 2}, out.data()); }, {q, "\"i\"", "[2]", "[1, 2]"});
}

// ---- GPT-2 checkpoints ----------------------------------------------------------------------------------------

ModelConfig tiny_config() {
  ModelConfig c;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_embd = 6;
  c.vocab_size = 7;
  c.max_seq = 5;
  return c;
}

class Checkpoint : public SafeTensors {
 protected:
  void SetUp() override {
    SafeTensors::SetUp();
    model_ = std::make_unique<Transformer<float>>(tiny_config(), 1, 5);
    model_->init_random(7);
    // Non-zero biases and LayerNorm parameters too, so every tensor is checked.
    Rng rng(11);
    for (const ParamInfo& p : model_->params_info())
      if (p.shape.size() == 1)
        for (int64_t i = 0; i < p.shape[0]; ++i) model_->params()[p.offset + i] = static_cast<float>(rng.normal());
  }

  // Writes the model's tensors after `edit` has changed the list.
  std::string write_model(const std::string& name, const std::function<void(std::vector<NamedTensor>&)>& edit = {},
                          std::map<std::string, std::string> meta = tiny_config().to_metadata()) {
    std::vector<NamedTensor> t = model_->gather_full();
    if (edit) edit(t);
    const std::string p = path(name);
    write_safetensors(p, t, meta);
    return p;
  }

  void expect_same_params(const Transformer<float>& other) const {
    for (const ParamInfo& p : model_->params_info())
      EXPECT_EQ(std::memcmp(model_->params() + p.offset, other.params() + p.offset, 4 * shape_numel(p.shape)), 0)
          << p.name << " differs";
  }

  std::unique_ptr<Transformer<float>> model_;
};

TEST_F(Checkpoint, LoadIsBitExact) {
  const std::string p = write_model("model.safetensors");
  SafeTensorsReader r(p);
  EXPECT_EQ(read_checkpoint_config(r, 0), tiny_config());
  Transformer<float> fresh(tiny_config(), 1, 5);
  fresh.init_random(99);
  fresh.load(r);
  expect_same_params(fresh);
}

TEST_F(SafeTensors, DamagedTensorBytesAreRefusedByChecksum) {
  // Our files carry a checksum per tensor: a flipped bit or a zero-filled block names the tensor and the file.
  std::vector<float> a = random_values<float>(1001, 5), b = random_values<float>(77, 6);
  const std::string p = path("sum.safetensors");
  write_safetensors(p, {{"a", Tensor(a.data(), DType::F32, {1001})}, {"b", Tensor(b.data(), DType::F32, {77})}},
                    {{"k", "v"}});
  {
    SafeTensorsReader r(p);
    EXPECT_EQ(r.metadata(), (std::map<std::string, std::string>{{"k", "v"}}));  // the checksums stay internal
    std::vector<float> out(1001);
    r.read<float>("a", {1001}, out.data());
    EXPECT_EQ(out, a);
  }
  auto damage = [&](const char* what, const std::function<void(std::string&, size_t)>& fn) {
    std::ifstream in(p, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    uint64_t hl = 0;
    std::memcpy(&hl, bytes.data(), 8);
    fn(bytes, 8 + hl);  // data section start: "a" comes first
    const std::string q = path(std::string(what) + ".safetensors");
    std::ofstream(q, std::ios::binary) << bytes;
    SafeTensorsReader r(q);
    std::vector<float> out(1001);
    test::expect_error([&] { r.read<float>("a", {1001}, out.data()); },
                       {q, "tensor \"a\" is damaged", "restore the file or resume from an earlier checkpoint"});
    std::vector<float> ok(77);
    r.read<float>("b", {77}, ok.data());  // an intact tensor of the same file still reads
  };
  damage("bitflip", [](std::string& s, size_t d) { s[d + 4 * 500 + 1] ^= 0x10; });
  damage("zeros", [](std::string& s, size_t d) { std::fill(s.begin() + static_cast<long>(d) + 400, s.begin() + static_cast<long>(d) + 1200, '\0'); });
}

TEST_F(Checkpoint, NonFiniteValuesAreRefused) {
  const std::string p = write_model("nan.safetensors", [](std::vector<NamedTensor>& t) {
    for (NamedTensor& n : t)
      if (n.name == "h.0.mlp.c_fc.bias") n.tensor.data<float>()[7] = std::numeric_limits<float>::quiet_NaN();
  });
  Transformer<float> other(tiny_config(), 1, 5);
  test::expect_error([&] { other.load(SafeTensorsReader(p)); },
                     {p, "h.0.mlp.c_fc.bias", "at element 7", "resume from an earlier checkpoint"});
}

TEST_F(Checkpoint, MissingTensorIsNamed) {
  const std::string p = write_model("missing.safetensors", [](std::vector<NamedTensor>& t) {
    std::erase_if(t, [](const NamedTensor& n) { return n.name == "h.0.mlp.c_fc.bias"; });
  });
  SafeTensorsReader r(p);
  Transformer<float> fresh(tiny_config(), 1, 5);
  expect_error([&] { fresh.load(r); }, {p, "missing tensor \"h.0.mlp.c_fc.bias\"", "L=1 H=2 C=6 V=7 maxT=5"});
}

TEST_F(Checkpoint, WrongShapeNamesTensorAndBothShapes) {
  const std::string p = write_model("shape.safetensors", [](std::vector<NamedTensor>& t) {
    for (auto& n : t)
      if (n.name == "h.0.attn.c_proj.weight") n.tensor = Tensor::zeros(DType::F32, {6, 7});
  });
  SafeTensorsReader r(p);
  Transformer<float> fresh(tiny_config(), 1, 5);
  expect_error([&] { fresh.load(r); }, {p, "\"h.0.attn.c_proj.weight\"", "[6, 7]", "expected [6, 6]"});
}

TEST_F(Checkpoint, IntegerTensorIsRejected) {
  const std::string p = write_model("int.safetensors", [](std::vector<NamedTensor>& t) {
    for (auto& n : t)
      if (n.name == "h.0.ln_2.bias") n.tensor = Tensor::zeros(DType::I32, {6});
  });
  SafeTensorsReader r(p);
  Transformer<float> fresh(tiny_config(), 1, 5);
  expect_error([&] { fresh.load(r); }, {p, "\"h.0.ln_2.bias\"", "I32"});
}

TEST_F(Checkpoint, HuggingFaceNamesAndExtraBuffersAreAccepted) {
  std::vector<float> mask(5 * 5, 1.0f);
  const std::string p = write_model("hf.safetensors", [&](std::vector<NamedTensor>& t) {
    for (auto& n : t) n.name = "transformer." + n.name;
    t.push_back({"transformer.h.0.attn.bias", Tensor(mask.data(), DType::F32, {1, 1, 5, 5})});
    t.push_back({"h.0.attn.bias", Tensor(mask.data(), DType::F32, {1, 1, 5, 5})});
    t.push_back({"lm_head.weight", Tensor(model_->params(), DType::F32, {7, 6})});
  });
  SafeTensorsReader r(p);
  EXPECT_EQ(read_checkpoint_config(r, 0), tiny_config());
  Transformer<float> fresh(tiny_config(), 1, 5);
  fresh.load(r);
  expect_same_params(fresh);
}

TEST_F(Checkpoint, F32CheckpointLoadsIntoDoubleModel) {
  const std::string p = write_model("model.safetensors");
  SafeTensorsReader r(p);
  Transformer<double> d(tiny_config(), 1, 5);
  d.load(r);
  for (const ParamInfo& info : model_->params_info())
    for (int64_t i = 0; i < shape_numel(info.shape); ++i)
      ASSERT_EQ(d.params()[info.offset + i], static_cast<double>(model_->params()[info.offset + i])) << info.name;
}

TEST_F(Checkpoint, ConfigWithoutHeadCountNeedsHeadsFlag) {
  std::map<std::string, std::string> meta = tiny_config().to_metadata();
  meta.erase("n_head");
  const std::string p = write_model("nohead.safetensors", {}, meta);
  SafeTensorsReader r(p);
  expect_error([&] { read_checkpoint_config(r, 0); }, {p, "n_head", "--heads"});
  EXPECT_EQ(read_checkpoint_config(r, 2), tiny_config());
  // An override that does not divide C is still validated.
  expect_error([&] { read_checkpoint_config(r, 4); }, {"C=6", "H=4"});
}

TEST_F(Checkpoint, ConfigFromShapesWithoutMetadata) {
  const std::string p = write_model("bare.safetensors", {}, {});
  SafeTensorsReader r(p);
  EXPECT_TRUE(r.metadata().empty());
  EXPECT_EQ(read_checkpoint_config(r, 2), tiny_config());
  expect_error([&] { read_checkpoint_config(r, 0); }, {p, "--heads"});
}

TEST_F(Checkpoint, ConfigErrors) {
  std::map<std::string, std::string> meta = tiny_config().to_metadata();
  meta["n_layer"] = "2";
  const std::string p = write_model("layers.safetensors", {}, meta);
  expect_error([&] { read_checkpoint_config(SafeTensorsReader(p), 0); }, {p, "n_layer=2", "1 blocks"});
  meta = tiny_config().to_metadata();
  meta["n_embd"] = "six";
  const std::string q = write_model("nan.safetensors", {}, meta);
  expect_error([&] { read_checkpoint_config(SafeTensorsReader(q), 0); }, {q, "n_embd", "\"six\"", "not an integer"});
  const std::string w = write_model("nowte.safetensors", [](std::vector<NamedTensor>& t) {
    std::erase_if(t, [](const NamedTensor& n) { return n.name == "wte.weight"; });
  });
  expect_error([&] { read_checkpoint_config(SafeTensorsReader(w), 0); }, {w, "\"wte.weight\"", "not a GPT-2"});
}

}  // namespace
}  // namespace aq
