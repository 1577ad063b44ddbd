// grad_sync.h — data-parallel gradient averaging in buckets that overlap the backward pass.
//
// The flat gradient buffer is cut, at tensor boundaries, into buckets of about --bucket-mb, counted from the
// end because backward finishes the gradients from the end. The model reports "every gradient at offset >= X
// is final" after each block (GPT2::set_grad_ready_hook); each bucket that is then complete starts its
// asynchronous all-reduce at once, and in-flight ones are polled so MPI makes progress while backward
// continues. finish() starts what is left and waits. The buffer then holds the SUM over the data-parallel ranks:
// the caller takes the mean where it is free (the trainer folds 1/dp into the norm and AdamW's gradient scale),
// which saves a pass over the gradients and works the same on any device.
//
// The reduction itself is the data-parallel algorithm's (flat or hierarchical, parallel/algo/): the buckets
// only decide when each range starts. Every rank of the DP group builds the same buckets from the same layout,
// so the all-reduces match.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "parallel/algo/dp_algorithm.h"

namespace aq {

class GradBuckets {
 public:
  // boundaries: offsets where tensors start, ascending (the first is 0); n: buffer length. grads may live on a
  // GPU when the algorithm was made for that device.
  GradBuckets(DpAlgorithm& dp, float* grads, int64_t n, const std::vector<int64_t>& boundaries, double bucket_mb);

  void begin_step();
  void on_ready(int64_t offset);
  void finish();

  size_t num_buckets() const { return buckets_.size(); }
  double comm_ms() const { return comm_ms_; }        // launch → completion, summed over buckets
  double exposed_ms() const { return exposed_ms_; }  // time finish() spent blocked

 private:
  struct Bucket {
    int64_t begin, end;
    std::string name;  // for diagnostics, built once
    WorkPtr work;
  };
  void launch(Bucket& b);
  DpAlgorithm& dp_;
  float* grads_;
  std::vector<Bucket> buckets_;  // ordered from the end of the buffer to its start
  size_t next_ = 0;              // first bucket not yet launched
  double comm_ms_ = 0, exposed_ms_ = 0;
};

}  // namespace aq
