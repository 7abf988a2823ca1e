// cunet.cuh: every kernel family in one header, for C++ programs (one translation unit
// includes it). Host build: g++ -std=c++20 -fopenmp; CUDA build: nvcc -x cu. Launchers are
// cunet::<op>(sizes..., pointers..., stream) on host or device pointers respectively.
#pragma once
#include "portable.cuh"
#include "act.cuh"
#include "concat.cuh"
#include "conv.cuh"
#include "dropout.cuh"
#include "loss.cuh"
#include "metrics.cuh"
#include "norm.cuh"
#include "optim.cuh"
#include "pool.cuh"
#include "upsample.cuh"
