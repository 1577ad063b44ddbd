#include "parallel/staged_backend.h"

#include "runtime/memory.h"

namespace aq {

char* StagedBackend::stage(size_t bytes) {
  if (a_.size() < bytes) a_.resize(bytes);
  return a_.data();
}

WorkPtr StagedBackend::all_reduce(void* data, int64_t count, DType dtype, const CollectiveOptions& opts) {
  const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
  char* h = stage(bytes);
  device_copy(h, Device::CPU, data, device_, bytes);
  WorkPtr w;
  if (dtype == DType::BF16) {
    bf16* x = reinterpret_cast<bf16*>(h);
    wide_.resize(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) wide_[static_cast<size_t>(i)] = bf16_to_float(x[i]);
    w = host_.all_reduce(wide_.data(), count, DType::F32, opts);
    w->wait();
    for (int64_t i = 0; i < count; ++i) x[i] = float_to_bf16(wide_[static_cast<size_t>(i)]);
  } else {
    w = host_.all_reduce(h, count, dtype, opts);
    w->wait();
  }
  device_copy(data, device_, h, Device::CPU, bytes);
  return w;
}

WorkPtr StagedBackend::reduce_scatter(const void* send, void* recv, int64_t recv_count, DType dtype,
                                      const CollectiveOptions& opts) {
  AQ_ASSERT(dtype != DType::BF16, "staged reduce_scatter on bf16 (gradients are reduced in fp32)");
  const size_t out = static_cast<size_t>(recv_count) * dtype_size(dtype), in = out * static_cast<size_t>(size());
  char* h = stage(in);
  if (b_.size() < out) b_.resize(out);
  device_copy(h, Device::CPU, send, device_, in);
  WorkPtr w = host_.reduce_scatter(h, b_.data(), recv_count, dtype, opts);
  w->wait();
  device_copy(recv, device_, b_.data(), Device::CPU, out);
  return w;
}

WorkPtr StagedBackend::all_gather(const void* send, void* recv, int64_t send_count, DType dtype,
                                  const CollectiveOptions& opts) {
  const size_t part = static_cast<size_t>(send_count) * dtype_size(dtype), all = part * static_cast<size_t>(size());
  char* h = stage(all);
  device_copy(h + part * static_cast<size_t>(rank()), Device::CPU, send, device_, part);
  WorkPtr w = host_.all_gather(h + part * static_cast<size_t>(rank()), h, send_count, dtype, opts);  // in place
  w->wait();
  device_copy(recv, device_, h, Device::CPU, all);
  return w;
}

WorkPtr StagedBackend::reduce_scatter_v(const void* send, void* recv, const std::vector<int64_t>& counts,
                                        DType dtype, const CollectiveOptions& opts) {
  AQ_ASSERT(dtype != DType::BF16, "staged reduce_scatter_v on bf16 (gradients are reduced in fp32)");
  int64_t total = 0;
  for (int64_t c : counts) total += c;
  const size_t es = dtype_size(dtype), out = static_cast<size_t>(counts.at(static_cast<size_t>(rank()))) * es;
  char* h = stage(static_cast<size_t>(total) * es);
  if (b_.size() < out) b_.resize(out);
  device_copy(h, Device::CPU, send, device_, static_cast<size_t>(total) * es);
  WorkPtr w = host_.reduce_scatter_v(h, b_.data(), counts, dtype, opts);
  w->wait();
  device_copy(recv, device_, b_.data(), Device::CPU, out);
  return w;
}

WorkPtr StagedBackend::all_gather_v(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                                    const CollectiveOptions& opts) {
  int64_t total = 0, mine = 0;
  for (int r = 0; r < size(); ++r) {
    if (r == rank()) mine = total;
    total += counts.at(static_cast<size_t>(r));
  }
  const size_t es = dtype_size(dtype);
  char* h = stage(static_cast<size_t>(total) * es);
  device_copy(h + mine * es, Device::CPU, send, device_, static_cast<size_t>(counts[rank()]) * es);
  WorkPtr w = host_.all_gather_v(h + mine * es, h, counts, dtype, opts);  // in place
  w->wait();
  device_copy(recv, device_, h, Device::CPU, static_cast<size_t>(total) * es);
  return w;
}

WorkPtr StagedBackend::broadcast(void* data, int64_t count, DType dtype, int root, const CollectiveOptions& opts) {
  const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
  char* h = stage(bytes);
  device_copy(h, Device::CPU, data, device_, bytes);
  WorkPtr w = host_.broadcast(h, count, dtype, root, opts);
  w->wait();
  device_copy(data, device_, h, Device::CPU, bytes);
  return w;
}

WorkPtr StagedBackend::send(const void* data, int64_t count, DType dtype, int peer, const CollectiveOptions& opts) {
  const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
  char* h = stage(bytes);
  device_copy(h, Device::CPU, data, device_, bytes);
  WorkPtr w = host_.send(h, count, dtype, peer, opts);
  w->wait();
  return w;
}

WorkPtr StagedBackend::recv(void* data, int64_t count, DType dtype, int peer, const CollectiveOptions& opts) {
  const size_t bytes = static_cast<size_t>(count) * dtype_size(dtype);
  char* h = stage(bytes);
  WorkPtr w = host_.recv(h, count, dtype, peer, opts);
  w->wait();
  device_copy(data, device_, h, Device::CPU, bytes);
  return w;
}

}  // namespace aq
