// test_plugin.cpp — operator definitions and plugins: the built-ins' declarations (every typed kernel belongs
// to a declared op, shape functions agree with the kernels' shapes), examples/custom_op's plugin loaded and run
// against a float64 reference and finite differences, a plain-C plugin, and every refusal of the loader (one
// line each, nothing left registered).
//
// AQ_TEST_SQUARED_RELU, when set, names the squared_relu plugin to load instead of the in-tree build: the
// out-of-tree check (tests/plugin/out_of_tree.sh) points it at the library it built against an installed prefix.
#include <cstdlib>
#include <fstream>
#include <set>

#include "ops/gelu/gelu.h"
#include "ops/op_def.h"
#include "ops/plugin_loader.h"
#include "ops/softmax_xent/softmax_xent.h"
#include "tests/test_util.h"

namespace aq {
namespace {

using ops::AttrValue;
using ops::OpRegistry;
using test::expect_error;

std::string squared_relu_path() {
  const char* env = std::getenv("AQ_TEST_SQUARED_RELU");
  return env && *env ? env : AQ_PLUGIN_SQUARED_RELU;
}

// ---- built-in declarations --------------------------------------------------------------------------------

TEST(OpDefs, EveryTypedKernelBelongsToADeclaredOp) {
  std::set<std::string> claimed;
  for (const ops::OpDef* d : OpRegistry::instance().list()) {
    if (d->origin != "built-in") continue;
    claimed.insert(d->typed.forward);
    if (!d->typed.backward.empty()) claimed.insert(d->typed.backward);
    claimed.insert(d->typed.variants.begin(), d->typed.variants.end());
    // A declared op runs on the CPU (the reference every other backend is checked against).
    EXPECT_NE(d->kernel(Device::CPU, DType::F32), nullptr) << d->name << " has no CPU fp32 kernel";
  }
  for (const std::string& k : ops::Registry::instance().list()) {
    const std::string name = k.substr(0, k.find('/'));
    EXPECT_TRUE(claimed.count(name)) << "typed kernel " << k
                                     << " belongs to no operator declared in ops/builtin_ops.cpp";
  }
  for (const char* family : {"aq::embedding", "aq::layernorm", "aq::matmul", "aq::attention", "aq::gelu",
                             "aq::softmax_xent", "aq::classifier", "aq::adamw", "aq::sum_squares"})
    EXPECT_NE(OpRegistry::instance().find(family), nullptr) << family;
}

TEST(OpDefs, TypedFastPathUnchanged) {
  // The model's path: Registry::find<Fn> returns the kernel itself, and it computes what it did.
  auto* f = ops::Registry::instance().find<ops::Gelu<double>::Forward>("gelu_forward", Device::CPU, DType::F64);
  EXPECT_EQ(f, &ops::gelu_forward_cpu<double>);
  expect_error(
      [] { ops::Registry::instance().find<ops::Gelu<float>::Forward>("gelu_forward", Device::CPU, DType::F64); },
      {"different signature"});
}

TEST(OpDefs, BuiltinShapeFunctions) {
  auto& r = OpRegistry::instance();
  // Shape functions read descriptions only: these tensors have no data.
  auto desc = [](DType t, Shape s) { return Tensor(reinterpret_cast<void*>(16), t, std::move(s)); };
  const auto ln = r.infer("aq::layernorm", DType::F32,
                          {desc(DType::F32, {37, 13}), desc(DType::F32, {13}), desc(DType::F32, {13})}, {});
  EXPECT_EQ(ln.shapes, (std::vector<Shape>{{37, 13}, {37}, {37}}));
  const auto ln16 = r.infer("aq::layernorm", DType::BF16,
                            {desc(DType::BF16, {5, 7}), desc(DType::BF16, {7}), desc(DType::BF16, {7})}, {});
  EXPECT_EQ(ln16.dtypes, (std::vector<DType>{DType::BF16, DType::F32, DType::F32}));  // statistics in master
  const auto mm = r.infer("aq::matmul", DType::F32, {desc(DType::F32, {11, 6}), desc(DType::F32, {6, 9}), Tensor()},
                          {});  // no bias
  EXPECT_EQ(mm.shapes.at(0), (Shape{11, 9}));
  const auto at = r.infer("aq::attention", DType::F32, {desc(DType::F32, {2, 5, 3 * 12})}, {AttrValue::integer(3)});
  EXPECT_EQ(at.shapes, (std::vector<Shape>{{2, 5, 12}, {2, 3, 5}}));
  const auto cl = r.infer("aq::classifier", DType::F32,
                          {desc(DType::F32, {9, 4}), desc(DType::F32, {33, 4}), desc(DType::I32, {9})},
                          {AttrValue::integer(0), AttrValue::integer(33), AttrValue::integer(3), AttrValue::real(0.1)});
  EXPECT_EQ(cl.workspace_bytes, ops::classifier_scratch_bytes<float>(3, 33));
  expect_error(
      [&] {
        r.infer("aq::matmul", DType::F32, {desc(DType::F32, {11, 6}), desc(DType::F32, {7, 9}), Tensor()}, {});
      },
      {"aq::matmul", "inner sizes 6 and 7 differ"});
  expect_error(
      [&] {
        r.infer("aq::layernorm", DType::F32, {desc(DType::F64, {3, 4}), desc(DType::F32, {4}), desc(DType::F32, {4})},
                {});
      },
      {"input \"inp\" is F64", "takes F32"});
  expect_error(
      [&] {
        r.infer("aq::attention", DType::F32, {desc(DType::F32, {2, 5, 36})}, {AttrValue::integer(5)});
      },
      {"not divisible by n_head = 5"});
  expect_error([&] { r.get("myorg::nothing"); }, {"no operator \"myorg::nothing\"", "aq::layernorm", "--plugin"});
}

TEST(OpDefs, ShardingRulesOfTheMegatronLayers) {
  // What the spec-built model will consume: column-parallel matmul splits the weight's output columns and makes
  // the input gradient a partial sum; row-parallel makes the output a partial sum.
  const ops::OpDef& mm = OpRegistry::instance().get("aq::matmul");
  const ops::ShardingRule* column = nullptr;
  const ops::ShardingRule* row = nullptr;
  for (const auto& r : mm.sharding) {
    if (r.name == "column") column = &r;
    if (r.name == "row") row = &r;
  }
  ASSERT_TRUE(column && row);
  EXPECT_EQ(column->inputs, (std::vector<int32_t>{AQ_SBP_BROADCAST, 1, 0}));
  EXPECT_EQ(column->input_grads.at(0), AQ_SBP_PARTIAL_SUM);
  EXPECT_EQ(row->outputs.at(0), AQ_SBP_PARTIAL_SUM);
}

// ---- examples/custom_op: myorg::squared_relu --------------------------------------------------------------

class SquaredRelu : public ::testing::Test {
 protected:
  void SetUp() override { ops::load_plugin(squared_relu_path()); }
};

TEST_F(SquaredRelu, Declaration) {
  const ops::OpDef& d = OpRegistry::instance().get("myorg::squared_relu");
  EXPECT_EQ(d.version, 1u);
  EXPECT_EQ(d.plugin, "myorg-activations 1.0.0");
  EXPECT_TRUE(d.has_backward);
  EXPECT_EQ(d.saved, (std::vector<int32_t>{0}));
  ASSERT_EQ(d.kernels.size(), 2u);
  EXPECT_NE(d.kernel(Device::CPU, DType::F64), nullptr);
  ASSERT_FALSE(d.sharding.empty());
  EXPECT_EQ(d.sharding[0].inputs, (std::vector<int32_t>{AQ_SBP_SPLIT_ANY}));
  // Loading the same file again is a no-op, not a duplicate.
  EXPECT_EQ(ops::load_plugin(squared_relu_path()).ops, (std::vector<std::string>{"myorg::squared_relu"}));
}

template <typename T>
void check_squared_relu(double tol) {
  const int R = 7, C = 13;  // odd sizes
  const size_t n = static_cast<size_t>(R) * C;
  const auto x64 = test::randn<double>(n, 101);
  const auto dy64 = test::randn<double>(n, 102);
  std::vector<T> x(x64.begin(), x64.end()), dy(dy64.begin(), dy64.end());
  std::vector<T> y(n, T(-777)), dx(n, T(-777));  // poisoned: an unwritten element shows
  const Shape s{R, C};
  const DType dt = dtype_of<T>();
  auto& r = OpRegistry::instance();
  r.forward("myorg::squared_relu", {Tensor(x.data(), dt, s)}, {Tensor(y.data(), dt, s)}, {});
  r.backward("myorg::squared_relu", {Tensor(x.data(), dt, s)}, {Tensor(dy.data(), dt, s)}, {Tensor(dx.data(), dt, s)},
             {});
  for (size_t i = 0; i < n; ++i) {
    const double xi = static_cast<double>(x[i]);  // the reference sees the rounded input
    const double want_y = xi > 0 ? xi * xi : 0.0;
    const double want_dx = xi > 0 ? 2.0 * xi * static_cast<double>(dy[i]) : 0.0;
    EXPECT_NEAR(static_cast<double>(y[i]), want_y, tol * (1 + std::abs(want_y))) << "y[" << i << "]";
    EXPECT_NEAR(static_cast<double>(dx[i]), want_dx, tol * (1 + std::abs(want_dx))) << "dx[" << i << "]";
  }
}

TEST_F(SquaredRelu, ForwardBackwardAgainstFloat64Reference) {
  check_squared_relu<double>(1e-15);
  check_squared_relu<float>(1e-6);
}

TEST_F(SquaredRelu, BackwardAgainstFiniteDifferences) {
  // d/dx Σ w·y by central differences in double, through the generic call path only.
  const int n = 29;
  auto x = test::randn<double>(n, 7);
  for (auto& v : x)
    if (std::abs(v) < 1e-3) v = 0.5;  // keep away from the kink at 0
  const auto w = test::randn<double>(n, 8);
  auto& r = OpRegistry::instance();
  const Shape s{n};
  auto loss = [&](const std::vector<double>& in) {
    std::vector<double> y(n);
    r.forward("myorg::squared_relu", {Tensor(const_cast<double*>(in.data()), DType::F64, s)},
              {Tensor(y.data(), DType::F64, s)}, {});
    double l = 0;
    for (int i = 0; i < n; ++i) l += w[i] * y[i];
    return l;
  };
  std::vector<double> dx(n);
  r.backward("myorg::squared_relu", {Tensor(x.data(), DType::F64, s)},
             {Tensor(const_cast<double*>(w.data()), DType::F64, s)}, {Tensor(dx.data(), DType::F64, s)}, {});
  const double h = 1e-6;
  for (int i = 0; i < n; ++i) {
    auto xp = x, xm = x;
    xp[i] += h;
    xm[i] -= h;
    const double fd = (loss(xp) - loss(xm)) / (2 * h);
    EXPECT_NEAR(dx[i], fd, 1e-6 * (1 + std::abs(fd))) << "element " << i;
  }
}

TEST_F(SquaredRelu, GenericCallPathChecksItsArguments) {
  auto& r = OpRegistry::instance();
  std::vector<float> x(6), y(6);
  std::vector<double> yd(6);
  expect_error(
      [&] {
        r.forward("myorg::squared_relu", {Tensor(x.data(), DType::F32, {2, 3})}, {Tensor(y.data(), DType::F32, {3, 2})},
                  {});
      },
      {"output \"y\" is F32 [3, 2]", "the shape function says F32 [2, 3]"});
  expect_error(
      [&] {
        r.forward("myorg::squared_relu", {Tensor(x.data(), DType::F32, {2, 3})},
                  {Tensor(yd.data(), DType::F64, {2, 3})}, {});
      },
      {"output \"y\" is F64"});
  std::vector<uint16_t> b(6), by(6);
  expect_error(
      [&] {
        r.forward("myorg::squared_relu", {Tensor(b.data(), DType::BF16, {6})}, {Tensor(by.data(), DType::BF16, {6})},
                  {});
      },
      {"has no kernel on cpu for BF16"});
  expect_error(
      [&] {
        r.forward("myorg::squared_relu", {Tensor(x.data(), DType::F32, {6})}, {Tensor(y.data(), DType::F32, {6})},
                  {AttrValue::real(1)});
      },
      {"takes 0 attributes, 1 given"});
  expect_error(
      [&] {
        r.forward("myorg::squared_relu", {Tensor(x.data(), DType::F32, {6})},
                  {Tensor(y.data(), DType::F32, {6}, Device::CUDA)}, {});
      },
      {"tensors on cpu and cuda in one call"});
}

// ---- a plugin in plain C ----------------------------------------------------------------------------------

TEST(CPlugin, LoadsAndComputes) {
  const ops::LoadedPlugin& p = ops::load_plugin(AQ_PLUGIN_GOOD);
  EXPECT_EQ(p.name, "cdemo");
  EXPECT_EQ(p.abi_major, AQ_OP_ABI_MAJOR);
  std::vector<double> x = {1, -2, 3.5}, y(3, -1), dx(3, -1), dy = {1, 1, 2};
  auto& r = OpRegistry::instance();
  r.forward("cdemo::scale", {Tensor(x.data(), DType::F64, {3})}, {Tensor(y.data(), DType::F64, {3})},
            {AttrValue::real(-0.5)});
  EXPECT_EQ(y, (std::vector<double>{-0.5, 1.0, -1.75}));
  r.backward("cdemo::scale", {}, {Tensor(dy.data(), DType::F64, {3})}, {Tensor(dx.data(), DType::F64, {3})},
             {AttrValue::real(-0.5)});
  EXPECT_EQ(dx, (std::vector<double>{-0.5, -0.5, -1.0}));
  // A kernel's own error comes back as one line naming the op and the plugin.
  expect_error(
      [&] {
        r.forward("cdemo::scale", {Tensor(x.data(), DType::F64, {3})}, {Tensor(y.data(), DType::F64, {3})},
                  {AttrValue::real(std::nan(""))});
      },
      {"cdemo::scale (", "forward failed: cdemo::scale: alpha is NaN"});
}

TEST(CPlugin, CudaArchitecturesAsDeclared) {
  const ops::LoadedPlugin& p = ops::load_plugin(AQ_PLUGIN_CUDA_ARCHS);
  EXPECT_EQ(p.cuda_archs, "80;90");
  const ops::OpDef& d = OpRegistry::instance().get("cdemo::scale_cuda");
  EXPECT_NE(d.kernel(Device::CUDA, DType::F32), nullptr);
  EXPECT_EQ(d.cuda_archs, "80;90");
}

// ---- refusals ---------------------------------------------------------------------------------------------

void expect_refused(const char* path, const std::vector<std::string>& parts, const char* op = nullptr) {
  const size_t before = OpRegistry::instance().list().size();
  std::vector<std::string> with_path = parts;
  with_path.push_back(path);
  expect_error([&] { ops::load_plugin(path); }, with_path);
  EXPECT_EQ(OpRegistry::instance().list().size(), before) << "a refused plugin left operators behind";
  if (op) {
    const ops::OpDef* d = OpRegistry::instance().find(op);
    EXPECT_TRUE(d == nullptr || d->origin != std::string("plugin ") + path)
        << op << " was registered by a refused plugin";
  }
}

TEST(PluginRefusals, NewerMajorAbi) {
  expect_refused(AQ_PLUGIN_BAD_MAJOR, {"was built for operator ABI 2.0", "speaks 1.0", "upgrade Aqueduct"});
}

TEST(PluginRefusals, StructSmallerThanRequired) {
  expect_refused(AQ_PLUGIN_SMALL_PLUGIN, {"AqPlugin.struct_size is", "needs at least", "rebuild the plugin"});
  expect_refused(AQ_PLUGIN_SMALL_OPDEF, {"AqOpDef.struct_size is", "needs at least"}, "cdemo::scale");
}

TEST(PluginRefusals, MissingEntryPoint) {
  expect_refused(AQ_PLUGIN_NO_ENTRY, {"exports no aq_plugin_init", "AQ_PLUGIN"});
}

TEST(PluginRefusals, MissingFile) {
  expect_error([] { ops::load_plugin("/nonexistent/libnothing.so"); }, {"/nonexistent/libnothing.so", "no such file"});
}

TEST(PluginRefusals, BackwardWithoutKernel) {
  expect_refused(AQ_PLUGIN_NO_BACKWARD_KERNEL,
                 {"operator \"cdemo::scale\"", "kernel cpu/F64 has no backward function", "declares a backward"});
}

TEST(PluginRefusals, DuplicateNames) {
  ops::load_plugin(squared_relu_path());
  expect_refused(AQ_PLUGIN_DUPLICATE_NAME, {"\"myorg::squared_relu\" is already declared by", "rename it"});
  expect_refused(AQ_PLUGIN_TWICE, {"declares operator \"cdemo::scale\" twice"});
  expect_refused(AQ_PLUGIN_AQ_NAMESPACE, {"\"aq::scale\"", "namespace \"aq::\", which is Aqueduct's own"});
}

TEST(PluginRefusals, InitFails) {
  expect_refused(AQ_PLUGIN_INIT_FAILS, {"refused to initialise", "cdemo needs AVX-512"});
}

TEST(PluginRefusals, DuplicateOfABuiltin) {
  // Against the built-ins, through the same validation a plugin meets (here with a built-in's own name).
  AqOpDef d{};
  d.struct_size = sizeof d;
  d.name = "aq::gelu";
  expect_error([&] { OpRegistry::instance().check_new(d.name, "libx.so"); },
               {"libx.so: operator \"aq::gelu\" is already declared by built-in"});
}

// ---- AQ_PLUGIN_PATH ---------------------------------------------------------------------------------------

class PluginPath : public test::TempDirTest {};

TEST_F(PluginPath, FilesAndDirectories) {
  for (const char* f : {"b.so", "a.so", "notes.txt"}) std::ofstream(path(f)) << "x";
  const auto files = ops::plugin_files((dir_ + "::" + path("notes.txt") + ":").c_str(), {"c.so"});
  EXPECT_EQ(files, (std::vector<std::string>{path("a.so"), path("b.so"), path("notes.txt"), "c.so"}));
  expect_error([&] { ops::plugin_files((dir_ + "/missing").c_str(), {}); },
               {"AQ_PLUGIN_PATH names", "/missing, which does not exist"});
  EXPECT_EQ(ops::plugin_files(nullptr, {"x.so"}), (std::vector<std::string>{"x.so"}));
}

}  // namespace
}  // namespace aq
