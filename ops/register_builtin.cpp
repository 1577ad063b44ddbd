// register_builtin.cpp — the one place where built-in kernels are registered. A new operator family adds its
// register_*_cpu call here (and its register_*_cuda call when it has CUDA kernels), and a case in
// tests/ops/test_ops.cpp (and tests/ops/test_ops_cuda.cpp).
#include "ops/adamw/adamw.h"
#include "ops/attention/attention.h"
#include "ops/embedding/embedding.h"
#include "ops/gelu/gelu.h"
#include "ops/glu/glu.h"
#include "ops/layernorm/layernorm.h"
#include "ops/matmul/matmul.h"
#include "ops/registry.h"
#include "ops/residual/residual.h"
#include "ops/rmsnorm/rmsnorm.h"
#include "ops/rope/rope.h"
#include "ops/softmax_xent/softmax_xent.h"
#include "ops/swiglu/swiglu.h"

namespace aq::ops {

void register_builtin_kernels(Registry& r) {
  register_embedding_cpu(r);
  register_layernorm_cpu(r);
  register_matmul_cpu(r);
  register_attention_cpu(r);
  register_gelu_cpu(r);
  register_softmax_xent_cpu(r);
  register_adamw_cpu(r);
  register_rmsnorm_cpu(r);
  register_swiglu_cpu(r);
  register_rope_cpu(r);
  register_residual_cpu(r);
  register_glu_cpu(r);
#ifdef AQ_HAVE_CUDA
  register_embedding_cuda(r);
  register_layernorm_cuda(r);
  register_gelu_cuda(r);
  register_matmul_cuda(r);
  register_attention_cuda(r);
  register_softmax_xent_cuda(r);
  register_adamw_cuda(r);
  register_rmsnorm_cuda(r);
  register_swiglu_cuda(r);
  register_rope_cuda(r);
  register_residual_cuda(r);
  register_glu_cuda(r);
#endif
}

}  // namespace aq::ops
