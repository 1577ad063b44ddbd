/* op_abi.h — the C ABI between Aqueduct and an operator plugin (a shared library loaded at run time).
 *
 * Plain C (C99 and C++): fixed-value enums, plain structs, function pointers, status codes with a message
 * buffer. No exceptions, no std:: types and no vtables cross this boundary, so a plugin built with another
 * compiler or standard library, or against an older Aqueduct, either loads or is refused with one sentence.
 *
 * Versioning (JAX FFI's rules):
 *   - AQ_OP_ABI_MAJOR changes when a field is removed, moved or changes meaning; a plugin of another major is
 *     refused. AQ_OP_ABI_MINOR changes when fields are appended at the end of a struct; a plugin of an older
 *     or newer minor of the same major loads.
 *   - Every struct starts with `uint32_t struct_size` (set it to sizeof(the struct) as the writer compiled it).
 *     A reader never touches a field beyond struct_size; the host refuses a struct smaller than its major's
 *     first release. Arrays of structs that a plugin hands to the host are walked with the first element's
 *     struct_size as the stride (so a plugin built against a newer minor, whose structs are larger, still
 *     indexes right); arrays the host hands to a plugin are arrays of pointers.
 *
 * Entry point: a plugin exports one function, `aq_plugin_init` (AQ_PLUGIN_INIT_SYMBOL), of type AqPluginInitFn.
 * It fills *plugin with a pointer to a description that must stay valid until the process ends (plugins are
 * never unloaded once accepted). Refuse a host you cannot work with by returning AQ_STATUS_UNSUPPORTED with
 * a message.
 *
 * Tensors are views: data pointer, dtype, device, shape and strides in elements (row-major contiguous today;
 * kernels may rely on that when aq_tensor_is_contiguous() says so). Kernels never allocate: outputs and the
 * workspace (whose size the shape function reports) are provided by the host.
 */
#ifndef AQUEDUCT_OP_ABI_H
#define AQUEDUCT_OP_ABI_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AQ_OP_ABI_MAJOR 1
#define AQ_OP_ABI_MINOR 0
#define AQ_PLUGIN_INIT_SYMBOL "aq_plugin_init"
#define AQ_MAX_DIMS 8
#define AQ_ERROR_CAPACITY 512

#if defined(_WIN32)
#define AQ_PLUGIN_EXPORT __declspec(dllexport)
#else
#define AQ_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

/* Fixed values: they are written into plugins, so they never change within a major version. */
typedef enum AqStatus {
  AQ_STATUS_OK = 0,
  AQ_STATUS_INVALID_ARGUMENT = 1, /* shapes, dtypes or attributes the op does not accept */
  AQ_STATUS_UNSUPPORTED = 2,      /* a device, dtype or host version the plugin cannot serve */
  AQ_STATUS_INTERNAL = 3          /* anything else; the message says what */
} AqStatus;

typedef enum AqDevice { AQ_DEVICE_CPU = 0, AQ_DEVICE_CUDA = 1 } AqDevice;

typedef enum AqDType {
  AQ_DTYPE_F32 = 0,
  AQ_DTYPE_F64 = 1,
  AQ_DTYPE_BF16 = 2,
  AQ_DTYPE_F16 = 3,
  AQ_DTYPE_I32 = 4,
  AQ_DTYPE_U16 = 5,
  /* Only in an AqTensorSpec: the dtype of the kernel being called (T), or its master type (float for bf16,
   * else T) — how one declaration covers the fp32, fp64 and bf16 kernels of an op. */
  AQ_DTYPE_KERNEL = 100,
  AQ_DTYPE_KERNEL_MASTER = 101
} AqDType;

typedef enum AqAttrType { AQ_ATTR_INT = 0, AQ_ATTR_FLOAT = 1 } AqAttrType;

/* Flags of an AqTensorSpec. */
#define AQ_TENSOR_PARAM 0x1u            /* a trained parameter (its gradient is a parameter gradient) */
#define AQ_TENSOR_OPTIONAL 0x2u         /* may be absent (data NULL); the kernel skips what uses it */
#define AQ_TENSOR_NO_GRAD 0x4u          /* not differentiable (token ids, statistics, losses) */
#define AQ_TENSOR_GRAD_ACCUMULATES 0x8u /* the backward adds into this input's gradient instead of writing it */

/* Tensor-parallel placement of one tensor, OneFlow's SBP vocabulary, as an int32:
 *   >= 0                    split along that dimension (each rank holds a contiguous slice)
 *   AQ_SBP_SPLIT_ANY        split along any one dimension, the same one for every tensor marked so (elementwise)
 *   AQ_SBP_BROADCAST        every rank holds the whole tensor
 *   AQ_SBP_PARTIAL_SUM      every rank holds a same-shaped partial; the value is their sum over the
 *                           tensor-parallel group (an all-reduce there makes it whole)
 *   AQ_SBP_NONE             the tensor is absent under this rule (an optional input; a gradient not produced) */
#define AQ_SBP_SPLIT_ANY (-1)
#define AQ_SBP_BROADCAST (-2)
#define AQ_SBP_PARTIAL_SUM (-3)
#define AQ_SBP_NONE (-4)

/* ---- written by the host, read by the plugin ------------------------------------------------------------- */

typedef struct AqError {
  uint32_t struct_size;
  char message[AQ_ERROR_CAPACITY]; /* one line: what is wrong, the numbers, the fix */
} AqError;

typedef struct AqTensor {
  uint32_t struct_size;
  void* data; /* NULL for an absent optional tensor */
  int32_t dtype;
  int32_t device;
  int32_t ndim;
  int64_t shape[AQ_MAX_DIMS];
  int64_t strides[AQ_MAX_DIMS]; /* in elements */
} AqTensor;

typedef struct AqAttrValue {
  uint32_t struct_size;
  int32_t type; /* AqAttrType */
  int64_t i;
  double f;
} AqAttrValue;

typedef struct AqTensorDesc { /* a tensor without data: what shape functions read and write */
  uint32_t struct_size;
  int32_t dtype;
  int32_t ndim; /* -1 for an absent optional input */
  int64_t shape[AQ_MAX_DIMS];
} AqTensorDesc;

/* The arguments of a shape function: inputs and attributes in declaration order; it writes every output's
 * dtype, ndim and shape, and the workspace bytes its kernel needs. It must not read any data. */
typedef struct AqShapeArgs {
  uint32_t struct_size;
  int32_t kernel_dtype; /* the dtype the kernel will run in (AqDType) */
  const AqTensorDesc* const* inputs;
  int32_t n_inputs;
  const AqAttrValue* const* attrs;
  int32_t n_attrs;
  AqTensorDesc* const* outputs;
  int32_t n_outputs;
  uint64_t workspace_bytes; /* out */
} AqShapeArgs;

/* The arguments of a kernel call.
 * forward:  inputs = the op's inputs, outputs = the op's outputs (declaration order).
 * backward: inputs = the saved tensors (AqBackwardSpec.saved order), then one gradient per forward output
 *           (data NULL for a NO_GRAD output); outputs = one gradient per forward input (data NULL where no
 *           gradient is wanted or the input is NO_GRAD). A gradient is overwritten unless its input carries
 *           AQ_TENSOR_GRAD_ACCUMULATES. */
typedef struct AqKernelArgs {
  uint32_t struct_size;
  int32_t device;
  int32_t dtype;
  const AqTensor* const* inputs;
  int32_t n_inputs;
  const AqTensor* const* outputs; /* the views are const; the data they point to is written */
  int32_t n_outputs;
  const AqAttrValue* const* attrs;
  int32_t n_attrs;
  void* workspace;
  uint64_t workspace_bytes;
  void* stream; /* cudaStream_t on AQ_DEVICE_CUDA; NULL on the CPU */
} AqKernelArgs;

typedef struct AqHost {
  uint32_t struct_size;
  uint16_t abi_major;
  uint16_t abi_minor;
  const char* version; /* Aqueduct's version, e.g. "0.1.0" */
} AqHost;

/* ---- written by the plugin, read by the host ------------------------------------------------------------- */

typedef AqStatus (*AqShapeFn)(void* user, AqShapeArgs* args, AqError* error);
typedef AqStatus (*AqKernelFn)(void* user, const AqKernelArgs* args, AqError* error);

typedef struct AqTensorSpec {
  uint32_t struct_size;
  const char* name;
  int32_t dtype;     /* AqDType, AQ_DTYPE_KERNEL or AQ_DTYPE_KERNEL_MASTER */
  int32_t ndim;      /* -1: any rank */
  const char* shape; /* documentation, e.g. "N,C" or "same as x" */
  uint32_t flags;    /* AQ_TENSOR_* */
} AqTensorSpec;

typedef struct AqAttrSpec {
  uint32_t struct_size;
  const char* name;
  int32_t type; /* AqAttrType */
  const char* doc;
} AqAttrSpec;

typedef struct AqKernel { /* one (device, dtype) */
  uint32_t struct_size;
  int32_t device;
  int32_t dtype;
  AqKernelFn forward;
  AqKernelFn backward; /* required when the op declares a backward */
  void* user;          /* passed to both */
} AqKernel;

/* The backward: which tensors the forward keeps for it (indices: 0 … n_inputs-1 are inputs, n_inputs … are
 * outputs); what it recomputes instead of keeping is documentation for planners and readers. */
typedef struct AqBackwardSpec {
  uint32_t struct_size;
  const int32_t* saved;
  int32_t n_saved;
  const char* recomputed; /* e.g. "softmax probabilities from q, k and lse"; NULL for nothing */
} AqBackwardSpec;

/* One legal tensor-parallel placement (OneFlow's SBP signature). Arrays are of the op's n_inputs and
 * n_outputs; input_grads gives each input's gradient placement (AQ_SBP_PARTIAL_SUM: a partial sum the engine
 * all-reduces over the tensor-parallel group before it is used or applied). */
typedef struct AqShardingRule {
  uint32_t struct_size;
  const char* name; /* e.g. "column", "row", "elementwise" */
  const int32_t* inputs;
  const int32_t* outputs;
  const int32_t* input_grads;
} AqShardingRule;

typedef struct AqOpDef {
  uint32_t struct_size;
  const char* name; /* namespaced: "myorg::squared_relu" ("aq::" is Aqueduct's own) */
  uint32_t version;
  const char* doc;
  const AqTensorSpec* inputs;
  int32_t n_inputs;
  const AqTensorSpec* outputs;
  int32_t n_outputs;
  const AqAttrSpec* attrs;
  int32_t n_attrs;
  AqShapeFn shape; /* required */
  void* shape_user;
  const AqBackwardSpec* backward; /* NULL: the op has no backward (not differentiable) */
  const AqKernel* kernels;
  int32_t n_kernels;
  const AqShardingRule* sharding; /* none: the op runs only replicated (every tensor broadcast) */
  int32_t n_sharding;
} AqOpDef;

typedef struct AqPlugin {
  uint32_t struct_size;
  uint16_t abi_major; /* AQ_OP_ABI_MAJOR as the plugin was compiled */
  uint16_t abi_minor;
  const char* name;
  const char* version;
  const AqOpDef* ops;
  int32_t n_ops;
  const char* cuda_archs; /* the CUDA architectures its kernels carry, e.g. "80;90"; NULL without CUDA */
} AqPlugin;

typedef AqStatus (*AqPluginInitFn)(const AqHost* host, const AqPlugin** plugin, AqError* error);

/* ---- small helpers (inline, nothing to link) ------------------------------------------------------------- */

static inline AqStatus aq_error_set(AqError* error, AqStatus status, const char* fmt, ...) {
  if (error && error->struct_size >= sizeof(AqError)) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error->message, AQ_ERROR_CAPACITY, fmt, ap);
    va_end(ap);
  }
  return status;
}

static inline int64_t aq_tensor_numel(const AqTensor* t) {
  int64_t n = 1;
  int32_t i;
  for (i = 0; i < t->ndim; ++i) n *= t->shape[i];
  return n;
}

static inline int aq_tensor_is_contiguous(const AqTensor* t) {
  int64_t expect = 1;
  int32_t i;
  for (i = t->ndim - 1; i >= 0; --i) {
    if (t->shape[i] != 1 && t->strides[i] != expect) return 0;
    expect *= t->shape[i];
  }
  return 1;
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* AQUEDUCT_OP_ABI_H */
