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
  // Family switches; the defaults are llama / qwen2.
  bool qk_norm = false;            // RMSNorm of each q and k head before RoPE: blk.N.attn_{q,k}_norm.weight (head_dim,)
  bool post_norms = false;         // RMSNorm of the attention and FFN outputs before their residual add:
                                   // blk.N.post_attention_norm.weight, blk.N.post_ffw_norm.weight (gemma2/3)
  float norm_weight_offset = 0.f;  // added to every norm weight at load (HF gemma: x * (1 + w))
  std::vector<int32_t> layer_window;       // per layer: sliding window W (keys t-W+1..t), 0 = global;
                                           // empty: every layer global
  std::vector<float> rope_inv_freq_local;  // inverse frequencies of windowed layers; empty: rope_inv_freq
  float attn_softcap = 0.f;                // > 0: attention scores -> cap * tanh(score / cap) (gemma2)
  float final_softcap = 0.f;               // > 0: logits -> cap * tanh(logit / cap) (gemma2)
  int64_t rope_dim = 0;                    // partial rotary: RoPE on the first rope_dim dims (0: head_dim);
                                           // rope_inv_freq then holds rope_dim / 2 values (phi3)
  float rope_mscale = 1.f;                 // rotated q/k values scaled by this (longrope attention factor)
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
