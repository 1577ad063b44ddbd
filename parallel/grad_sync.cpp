#include "parallel/grad_sync.h"

#include <algorithm>

#include "runtime/sysinfo.h"
#include "runtime/trace.h"

namespace aq {

GradBuckets::GradBuckets(DpAlgorithm& dp, float* grads, int64_t n, const std::vector<int64_t>& boundaries,
                         double bucket_mb)
    : dp_(dp), grads_(grads) {
  AQ_ASSERT(bucket_mb > 0, "bucket size ", bucket_mb, " MiB (TrainConfig::validate checks --bucket-mb)");
  const int64_t target = std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * (1 << 20) / sizeof(float)));
  int64_t end = n;
  for (size_t i = boundaries.size(); i-- > 0;) {
    const int64_t begin = boundaries[i];
    if (end - begin >= target || i == 0) {
      const int64_t b = i == 0 ? 0 : begin;
      buckets_.push_back(Bucket{b, end, str("gradient bucket [", b, ", ", end, ")"), nullptr});
      end = begin;
    }
  }
}

void GradBuckets::begin_step() {
  next_ = 0;
  comm_ms_ = exposed_ms_ = 0;
  for (auto& b : buckets_) b.work.reset();
}

void GradBuckets::launch(Bucket& b) {
  b.work = dp_.all_reduce(grads_ + b.begin, b.end - b.begin, b.begin, {b.name});
}

void GradBuckets::on_ready(int64_t offset) {
  while (next_ < buckets_.size() && buckets_[next_].begin >= offset) launch(buckets_[next_++]);
  for (size_t i = 0; i < next_; ++i) buckets_[i].work->test();  // drive progress of in-flight buckets
}

void GradBuckets::finish() {
  while (next_ < buckets_.size()) launch(buckets_[next_++]);
  Timer t;
  {
    trace::Span span(trace::Stream::Compute, "wait for dp buckets");  // the exposed part of the reduction
    for (auto& b : buckets_) b.work->wait();
  }
  exposed_ms_ = t.ms();
  for (auto& b : buckets_) comm_ms_ += b.work->completed_ms() - b.work->started_ms();
  // Each bucket's all-reduce on the timeline, from its launch (during backward) to its completion as seen by
  // test()/wait(): the stamps the Work kept, recorded now that every one is known.
  if (trace::active())
    for (size_t i = 0; i < buckets_.size(); ++i) {
      const Bucket& b = buckets_[i];
      const double elems = static_cast<double>(b.end - b.begin);
      trace::record(trace::Stream::DataParallel, str("bucket ", i, " all-reduce"),
                    trace::ns_from_steady_ms(b.work->started_ms()), trace::ns_from_steady_ms(b.work->completed_ms()),
                    {{"bucket", static_cast<double>(i)}, {"bytes", elems * sizeof(float)}, {"elements", elems},
                     {"offset", static_cast<double>(b.begin)}},
                    b.name);
    }
}

}  // namespace aq
