// Softmax cross-entropy, mean over the batch, with label smoothing or soft targets (mixup).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_backend.h"

namespace repadapter {

// Both target kinds reduce to one form: a target distribution t per row, loss = −Σ_c t_c log p_c
// and d loss / d logit_c = (Σ t) p_c − t_c. Label smoothing ε is t = (1−ε)·onehot + ε/C.
Status CpuBackend::cross_entropy(const float* logits, const int32_t* labels,
                                 const float* soft_targets, float smoothing, float* loss,
                                 float* d_logits, int64_t B, int64_t C) {
  if ((labels == nullptr) == (soft_targets == nullptr))
    return InvalidArgument("cross_entropy needs exactly one of labels and soft targets");
  double total = 0;
  std::vector<double> logp(C), target(C);
  for (int64_t b = 0; b < B; ++b) {
    const float* row = logits + b * C;
    double mx = row[0];
    for (int64_t c = 1; c < C; ++c) mx = std::max(mx, static_cast<double>(row[c]));
    double sum = 0;
    for (int64_t c = 0; c < C; ++c) sum += std::exp(row[c] - mx);
    const double lse = mx + std::log(sum);
    for (int64_t c = 0; c < C; ++c) logp[c] = row[c] - lse;
    if (labels) {
      const int64_t y = labels[b];
      if (y < 0 || y >= C)
        return OutOfRange("label " + std::to_string(y) + " of sample " + std::to_string(b) +
                          " is outside [0, " + std::to_string(C) + ")");
      for (int64_t c = 0; c < C; ++c) target[c] = smoothing / C;
      target[y] += 1.0 - smoothing;
    } else {
      for (int64_t c = 0; c < C; ++c) target[c] = soft_targets[b * C + c];
    }
    double t_sum = 0;
    for (int64_t c = 0; c < C; ++c) {
      total -= target[c] * logp[c];
      t_sum += target[c];
    }
    if (d_logits)
      for (int64_t c = 0; c < C; ++c)
        d_logits[b * C + c] = static_cast<float>((t_sum * std::exp(logp[c]) - target[c]) / B);
  }
  *loss = static_cast<float>(total / B);
  return Status::Ok();
}

}  // namespace repadapter
