// What a ViT with RepAdapter is: the timm architecture (vit_*_patch*_*) plus the adapter
// placement, and which parameters train.
#pragma once
#include <cstdint>
#include <string>

#include "../core/status.h"

namespace repadapter {

// attn: one adapter between norm1 and qkv. block: also one between norm2 and fc1.
enum class Placement { kNone = 0, kAttn = 1, kBlock = 2 };

// adapters: adapters + head (the method); head: linear probe; all: full fine-tuning.
enum class Trainable { kAdapters = 0, kHead = 1, kAll = 2 };

struct AdapterConfig {
  Placement placement = Placement::kNone;
  int64_t hidden = 8;    // R
  int64_t groups = 2;    // G
  float scale = 1.0f;    // s
  float dropout = 0.1f;  // on z, training only
};

struct ViTConfig {
  int64_t image_size = 224;  // S
  int64_t patch_size = 16;   // p
  int64_t width = 768;       // D
  int64_t depth = 12;
  int64_t heads = 12;        // H
  int64_t mlp_hidden = 3072; // F
  int64_t num_classes = 1000;// C
  float ln_eps = 1e-6f;
  float drop_path = 0.0f;    // the last block's stochastic-depth rate; linear from 0
  AdapterConfig adapter;
  Trainable trainable = Trainable::kAdapters;

  int64_t grid() const { return image_size / patch_size; }
  int64_t patches() const { return grid() * grid(); }     // P
  int64_t tokens() const { return patches() + 1; }        // N
  int64_t head_dim() const { return width / heads; }      // Dh
  int64_t patch_dim() const { return 3 * patch_size * patch_size; }  // Q
  bool adapter_attn() const { return adapter.placement != Placement::kNone; }
  bool adapter_mlp() const { return adapter.placement == Placement::kBlock; }

  // Every rule a config must satisfy, all problems in one message.
  Status validate() const;
};

const char* placement_name(Placement p);
const char* trainable_name(Trainable t);

}  // namespace repadapter
