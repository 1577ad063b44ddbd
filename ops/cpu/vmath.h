// vmath.h — vectorised elementwise exp (glibc libmvec through a -ffast-math translation unit).
//
// Scalar expf costs ~10 ns; the softmaxes call it B·T·V times a step. vmath.cpp alone is compiled with
// -ffast-math so GCC emits libmvec's SIMD exp; keeping it to this file keeps fast-math out of every reduction.
#pragma once

#include <cstdint>

namespace aq::cpu {

void exp_inplace(float* x, int64_t n);
void exp_inplace(double* x, int64_t n);

}  // namespace aq::cpu
