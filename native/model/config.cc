#include "config.h"

#include <cmath>

namespace repadapter {

const char* placement_name(Placement p) {
  switch (p) {
    case Placement::kNone: return "none";
    case Placement::kAttn: return "attn";
    case Placement::kBlock: return "block";
  }
  return "?";
}

const char* trainable_name(Trainable t) {
  switch (t) {
    case Trainable::kAdapters: return "adapters";
    case Trainable::kHead: return "head";
    case Trainable::kAll: return "all";
  }
  return "?";
}

Status ViTConfig::validate() const {
  std::string problems;
  auto require = [&](bool ok, const std::string& what) {
    if (!ok) problems += (problems.empty() ? "" : "; ") + what;
  };
  auto s = [](int64_t v) { return std::to_string(v); };
  require(image_size > 0, "imageSize must be positive, got " + s(image_size));
  require(patch_size > 0, "patchSize must be positive, got " + s(patch_size));
  if (image_size > 0 && patch_size > 0)
    require(image_size % patch_size == 0 && patch_size <= image_size,
            "patchSize " + s(patch_size) + " must divide imageSize " + s(image_size));
  require(width > 0, "width must be positive, got " + s(width));
  require(depth > 0, "depth must be positive, got " + s(depth));
  require(heads > 0, "heads must be positive, got " + s(heads));
  if (width > 0 && heads > 0)
    require(width % heads == 0, "heads " + s(heads) + " must divide width " + s(width));
  require(mlp_hidden > 0, "MLP hidden width must be positive, got " + s(mlp_hidden));
  require(num_classes > 0, "numClasses must be positive, got " + s(num_classes));
  require(ln_eps > 0 && std::isfinite(ln_eps), "LayerNorm eps must be a positive number");
  require(drop_path >= 0 && drop_path < 1, "dropPath must be in [0, 1), got " + std::to_string(drop_path));
  if (adapter.placement != Placement::kNone) {
    require(adapter.hidden > 0, "adapter hidden width must be positive, got " + s(adapter.hidden));
    require(adapter.groups > 0, "adapter groups must be positive, got " + s(adapter.groups));
    if (adapter.hidden > 0 && adapter.groups > 0) {
      require(adapter.hidden % adapter.groups == 0,
              "adapter groups " + s(adapter.groups) + " must divide the adapter hidden width " +
                  s(adapter.hidden));
      require(width % adapter.groups == 0,
              "adapter groups " + s(adapter.groups) + " must divide width " + s(width));
    }
    require(std::isfinite(adapter.scale), "adapter scale must be a finite number");
    require(adapter.dropout >= 0 && adapter.dropout < 1,
            "adapter dropout must be in [0, 1), got " + std::to_string(adapter.dropout));
  }
  // Bounds that keep every size product (tokens × width, parameter counts) far inside int64.
  const int64_t kMaxSide = 1 << 16, kMaxWidth = 1 << 18, kMaxCount = 1 << 24;
  require(image_size <= kMaxSide && patch_size <= kMaxSide, "imageSize and patchSize must be at most 65536");
  require(width <= kMaxWidth && mlp_hidden <= kMaxWidth, "width and the MLP width must be at most 262144");
  require(depth <= 4096 && heads <= kMaxWidth, "depth must be at most 4096");
  require(num_classes <= kMaxCount, "numClasses must be at most 16777216");
  require(adapter.placement == Placement::kNone || adapter.hidden <= kMaxWidth, "adapter hidden width must be at most 262144");
  if (!problems.empty()) return InvalidArgument("invalid ViT config: " + problems);
  return Status::Ok();
}

}  // namespace repadapter
