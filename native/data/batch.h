// Batch assembly for the data pipeline: from a cache of decoded uint8 images to a normalized
// float32 batch [B, 3, S, S], with the training augmentations of timm (RandomResizedCrop,
// horizontal flip, Mixup / CutMix with label smoothing) in one pass.
//
// Every random choice is a pure function of the counter-based RNG (core/rng.h):
//   per sample:  (seed, epoch, dataset index)   crop and flip
//   per batch:   (seed, epoch, batch index)     mixup / cutmix draw and box
//   per epoch:   (seed, epoch)                  the shuffled order
// so a batch is the same whatever thread assembles it, and a run resumed at (epoch, position)
// sees exactly the batches it would have seen.
//
// No N-API here: napi/data.cc converts the JavaScript arguments and calls these functions.
#pragma once
#include <cstdint>

#include "../core/status.h"

namespace repadapter {
namespace data {

// n decoded images of h×w pixels, c ∈ {1, 3} interleaved uint8 channels: [n, h, w, c] (HWC).
// c = 1 (greyscale, e.g. MNIST) is replicated to the three output channels.
struct ImageCache {
  const uint8_t* pixels = nullptr;
  int64_t n = 0, h = 0, w = 0, c = 0;
};

// timm RandomResizedCrop: area fraction in [scale_min, scale_max], log-uniform aspect ratio in
// [ratio_min, ratio_max], 10 attempts, then a centre crop clamped to the ratio range.
struct CropSpec {
  bool enabled = false;
  double scale_min = 0.08, scale_max = 1.0;
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
};

// timm Mixup in 'batch' mode: one lam per batch, sample i mixes with sample B-1-i.
struct MixupSpec {
  bool enabled = false;
  double mixup_alpha = 1.0;
  double cutmix_alpha = 0.0;
  double cutmix_min = -1.0, cutmix_max = -1.0;  // box side ratios; < 0: box from lam
  double prob = 1.0;         // probability of mixing a batch at all
  double switch_prob = 0.5;  // probability of cutmix when both alphas are > 0
  double smoothing = 0.1;    // label smoothing of the soft targets
  bool correct_lam = true;   // lam := 1 - box area / image area after clipping the box
};

struct BatchSpec {
  int64_t size = 0;  // S: output images are S×S
  float mean[3] = {0.485f, 0.456f, 0.406f};
  float std[3] = {0.229f, 0.224f, 0.225f};
  double flip_prob = 0.0;  // horizontal flip probability per sample
  CropSpec crop;
  MixupSpec mixup;
  int64_t num_classes = 0;  // C of the soft targets (needed with mixup)
  uint64_t seed = 0, epoch = 0, batch_index = 0;
};

// Where a sample's pixels come from: a crop of its cached image, flipped or not.
struct SampleTransform {
  int64_t top = 0, left = 0, height = 0, width = 0;
  bool flip = false;
};

// The per-batch mixing that was applied.
struct MixInfo {
  double lam = 1.0;  // weight of the sample's own image and label
  bool cutmix = false;
  int64_t y0 = 0, y1 = 0, x0 = 0, x1 = 0;  // cutmix box [y0, y1) × [x0, x1) in output pixels
};

// The crop and flip of dataset item `index` in this spec's epoch for a cached image of h×w.
SampleTransform sample_transform(const BatchSpec& spec, int64_t h, int64_t w, int64_t index);

// The mixup / cutmix draw of this spec's (epoch, batch_index) for S×S images.
MixInfo sample_mix(const BatchSpec& spec);

// images: [B, 3, S, S] float32, written whole.
// labels: [B] class ids of the batch; read only when soft_targets is given.
// soft_targets: [B, num_classes] or null; with spec.mixup.enabled the mixed, smoothed targets.
Status assemble_batch(const ImageCache& cache, const int32_t* indices, int64_t B, const int32_t* labels,
                      const BatchSpec& spec, float* images, float* soft_targets, MixInfo* info);

enum class Filter { kBilinear, kBicubic };

// Resizes images [first, first + count) of src to dst [count, oh, ow, src.c] with PIL's
// antialiased separable filters (bicubic = Keys a = -0.5, what torchvision's
// Resize(interpolation=BICUBIC) does on PIL images), rounding to uint8 after each pass.
Status resize_images(const ImageCache& src, int64_t first, int64_t count, int64_t oh, int64_t ow, Filter filter,
                     uint8_t* dst);

// out: [n], a permutation of 0..n-1 that depends only on (seed, epoch) (Fisher–Yates).
Status permutation(int64_t n, uint64_t seed, uint64_t epoch, int32_t* out);

}  // namespace data
}  // namespace repadapter
