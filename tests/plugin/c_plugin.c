/* c_plugin.c — a plugin written in plain C99 against include/aqueduct/op_abi.h alone: cdemo::scale, y = alpha·x
 * (fp64, CPU) with its backward. Compiled once as it is (it must load and compute), and again with one of the
 * defines below to make the plugins the loader must refuse, each with its own sentence:
 *   BAD_MAJOR          built for the next major ABI version
 *   SMALL_PLUGIN       AqPlugin.struct_size smaller than ABI 1.0's AqPlugin
 *   SMALL_OPDEF        AqOpDef.struct_size smaller than ABI 1.0's AqOpDef
 *   NO_ENTRY           exports no aq_plugin_init
 *   NO_BACKWARD_KERNEL declares a backward but its kernel has none
 *   DUPLICATE_NAME     declares myorg::squared_relu, which examples/custom_op already declares
 *   TWICE              declares cdemo::scale twice
 *   AQ_NAMESPACE       declares an op in Aqueduct's own namespace
 *   INIT_FAILS         aq_plugin_init returns an error with a message
 * and one that loads: CUDA_ARCHS, a plugin declaring a CUDA kernel and the architectures it carries (the entry
 * is never called here; the test checks what the host records and aq-op inspect prints). */
#include <stddef.h>
#include <string.h>

#include "aqueduct/op_abi.h"

static AqStatus scale_shape(void* user, AqShapeArgs* a, AqError* error) {
  (void)user;
  (void)error;
  *a->outputs[0] = *a->inputs[0];
  a->outputs[0]->dtype = a->kernel_dtype;
  a->workspace_bytes = 0;
  return AQ_STATUS_OK;
}

/* y (n) = alpha · x (n) */
static AqStatus scale_forward(void* user, const AqKernelArgs* a, AqError* error) {
  const double* x = (const double*)a->inputs[0]->data;
  double* y = (double*)a->outputs[0]->data;
  const double alpha = a->attrs[0]->f;
  int64_t i, n = aq_tensor_numel(a->inputs[0]);
  (void)user;
  if (alpha != alpha) return aq_error_set(error, AQ_STATUS_INVALID_ARGUMENT, "cdemo::scale: alpha is NaN");
  for (i = 0; i < n; ++i) y[i] = alpha * x[i];
  return AQ_STATUS_OK;
}

#ifndef NO_BACKWARD_KERNEL
/* inputs: dy (nothing saved); outputs: dx = alpha · dy */
static AqStatus scale_backward(void* user, const AqKernelArgs* a, AqError* error) {
  const double* dy = (const double*)a->inputs[0]->data;
  double* dx = (double*)a->outputs[0]->data;
  int64_t i, n = aq_tensor_numel(a->inputs[0]);
  (void)user;
  (void)error;
  if (!dx) return AQ_STATUS_OK;
  for (i = 0; i < n; ++i) dx[i] = a->attrs[0]->f * dy[i];
  return AQ_STATUS_OK;
}
#endif

static const AqTensorSpec scale_inputs[1] = {{sizeof(AqTensorSpec), "x", AQ_DTYPE_KERNEL, -1, "any", 0}};
static const AqTensorSpec scale_outputs[1] = {{sizeof(AqTensorSpec), "y", AQ_DTYPE_KERNEL, -1, "same as x", 0}};
static const AqAttrSpec scale_attrs[1] = {{sizeof(AqAttrSpec), "alpha", AQ_ATTR_FLOAT, "the factor"}};
static const AqBackwardSpec scale_backward_spec = {sizeof(AqBackwardSpec), NULL, 0, NULL};
#ifdef NO_BACKWARD_KERNEL
static const AqKernel scale_kernels[1] = {{sizeof(AqKernel), AQ_DEVICE_CPU, AQ_DTYPE_F64, scale_forward, NULL, NULL}};
#define N_KERNELS 1
#elif defined(CUDA_ARCHS)
static const AqKernel scale_kernels[2] = {
    {sizeof(AqKernel), AQ_DEVICE_CPU, AQ_DTYPE_F64, scale_forward, scale_backward, NULL},
    {sizeof(AqKernel), AQ_DEVICE_CUDA, AQ_DTYPE_F32, scale_forward, scale_backward, NULL}};
#define N_KERNELS 2
#else
static const AqKernel scale_kernels[1] = {
    {sizeof(AqKernel), AQ_DEVICE_CPU, AQ_DTYPE_F64, scale_forward, scale_backward, NULL}};
#define N_KERNELS 1
#endif
static const int32_t split_any[1] = {AQ_SBP_SPLIT_ANY};
static const AqShardingRule scale_rules[1] = {{sizeof(AqShardingRule), "elementwise", split_any, split_any, split_any}};

#if defined(DUPLICATE_NAME)
#define OP_NAME "myorg::squared_relu"
#elif defined(CUDA_ARCHS)
#define OP_NAME "cdemo::scale_cuda"
#elif defined(AQ_NAMESPACE)
#define OP_NAME "aq::scale"
#else
#define OP_NAME "cdemo::scale"
#endif

#ifdef SMALL_OPDEF
#define OPDEF_SIZE offsetof(AqOpDef, kernels)
#else
#define OPDEF_SIZE sizeof(AqOpDef)
#endif

#define SCALE_OP                                                                                                 \
  {                                                                                                              \
    OPDEF_SIZE, OP_NAME, 1, "y = alpha x", scale_inputs, 1, scale_outputs, 1, scale_attrs, 1, scale_shape, NULL, \
        &scale_backward_spec, scale_kernels, N_KERNELS, scale_rules, 1                                           \
  }

#ifdef TWICE
static const AqOpDef ops[2] = {SCALE_OP, SCALE_OP};
#define N_OPS 2
#else
static const AqOpDef ops[1] = {SCALE_OP};
#define N_OPS 1
#endif

#ifdef BAD_MAJOR
#define MAJOR (AQ_OP_ABI_MAJOR + 1)
#else
#define MAJOR AQ_OP_ABI_MAJOR
#endif

#ifdef SMALL_PLUGIN
#define PLUGIN_SIZE offsetof(AqPlugin, ops)
#else
#define PLUGIN_SIZE sizeof(AqPlugin)
#endif

#ifdef CUDA_ARCHS
#define ARCHS "80;90"
#else
#define ARCHS NULL
#endif

static const AqPlugin plugin = {PLUGIN_SIZE, MAJOR, AQ_OP_ABI_MINOR, "cdemo", "0.1", ops, N_OPS, ARCHS};

#ifdef NO_ENTRY
#define ENTRY aq_plugin_start
#else
#define ENTRY aq_plugin_init
#endif

AQ_PLUGIN_EXPORT AqStatus ENTRY(const AqHost* host, const AqPlugin** out, AqError* error) {
  if (host->struct_size < sizeof(AqHost) || host->abi_major != AQ_OP_ABI_MAJOR)
    return aq_error_set(error, AQ_STATUS_UNSUPPORTED, "cdemo needs operator ABI %d", AQ_OP_ABI_MAJOR);
#ifdef INIT_FAILS
  return aq_error_set(error, AQ_STATUS_UNSUPPORTED, "cdemo needs AVX-512, which this CPU lacks");
#endif
  *out = &plugin;
  return AQ_STATUS_OK;
}
