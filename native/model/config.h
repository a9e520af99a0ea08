// Model configuration: the family switches the one decoder plan is driven by.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/dtype.h"

namespace metallic {

enum class Activation : int32_t { kSilu = 0, kGeluTanh = 1 };

struct ModelConfig {
  int64_t n_vocab = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  int64_t n_ff = 0;
  float rms_eps = 1e-5f;
  bool rope_neox = true;             // rotate-halves pairing; false: interleaved pairs
  std::vector<float> rope_inv_freq;  // (head_dim / 2,) after rope scaling
  float attn_scale = 0.f;            // 0 → 1/sqrt(head_dim)
  bool qkv_bias = false;
  bool tied_embeddings = false;
  Activation activation = Activation::kSilu;
  float embed_scale = 1.f;
};

// A weight handed over by the loader: a view of `nbytes` bytes at `data` (the caller keeps the
// memory alive for the engine's lifetime). `shape` is numpy order, last dim = row length.
struct WeightSpec {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t nbytes = 0;
};

using WeightMap = std::unordered_map<std::string, WeightSpec>;

}  // namespace metallic
