// Batch assembly: crop, resample, flip, normalize, mix. See batch.h for the contract.
#include "batch.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "../core/rng.h"

namespace repadapter {
namespace data {
namespace {

// Stream tags keep the three kinds of draws apart for the same (seed, epoch).
constexpr uint64_t kShuffleStream = 0x53485546464c45ull;  // "SHUFFLE"
constexpr uint64_t kSampleStream = 0x53414d504c45ull;     // "SAMPLE"
constexpr uint64_t kMixupStream = 0x4d49585550ull;        // "MIXUP"

// Successive draws of one (seed, stream): uniform doubles with 53 random bits.
class Draws {
 public:
  Draws(uint64_t seed, uint64_t stream) : seed_(seed), stream_(stream) {}
  double uniform() {
    uint64_t h = mix64(seed_ ^ mix64(stream_ ^ mix64(counter_++)));
    return static_cast<double>(h >> 11) * 0x1.0p-53;
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // numpy's randint(lo, hi): an integer in [lo, hi); lo when the range is empty.
  int64_t randint(int64_t lo, int64_t hi) {
    if (hi <= lo) return lo;
    int64_t v = lo + static_cast<int64_t>(uniform() * static_cast<double>(hi - lo));
    return std::min(v, hi - 1);
  }
  double normal() {  // Box–Muller, one value per pair of draws
    double u1 = 1.0 - uniform();  // (0, 1]
    double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  // Gamma(a, 1): Marsaglia–Tsang, with the a < 1 boost.
  double gamma(double a) {
    if (a < 1.0) {
      double u = 1.0 - uniform();
      return gamma(a + 1.0) * std::pow(u, 1.0 / a);
    }
    const double d = a - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
    for (int attempt = 0; attempt < 10000; ++attempt) {
      double x, v;
      do {
        x = normal();
        v = 1.0 + c * x;
      } while (v <= 0.0);
      v = v * v * v;
      double u = 1.0 - uniform();
      if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
      if (std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
    }
    return d;  // not reached in practice: acceptance is > 95% per attempt
  }
  double beta(double a, double b) {
    double x = gamma(a), y = gamma(b);
    return x + y > 0.0 ? x / (x + y) : 0.5;
  }

 private:
  uint64_t seed_, stream_, counter_ = 0;
};

uint64_t sample_stream(uint64_t epoch, uint64_t index) { return mix64(mix64(kSampleStream + epoch) + index); }
uint64_t mixup_stream(uint64_t epoch, uint64_t batch) { return mix64(mix64(kMixupStream + epoch) + batch); }

// Python's int(round(x)): round half to even.
int64_t py_round(double x) { return static_cast<int64_t>(std::nearbyint(x)); }

// Resampling weights of one axis, as PIL computes them: the filter widens by the downscale
// factor (antialiasing), so a shrink averages every source pixel it covers. Output pixel o reads
// source pixels start[o] .. start[o] + count[o] - 1 (absolute indices inside [in0, in0 + in_len))
// with weights w[o * taps ...].
struct Taps {
  std::vector<int64_t> start, count;
  std::vector<float> w;
  int64_t taps = 0;
};

double filter_support(Filter f) { return f == Filter::kBicubic ? 2.0 : 1.0; }

double filter_weight(Filter f, double x) {
  x = std::fabs(x);
  if (f == Filter::kBilinear) return x < 1.0 ? 1.0 - x : 0.0;
  constexpr double a = -0.5;  // PIL's (and torchvision's) bicubic: Keys / Catmull-Rom
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

void make_taps(int64_t in0, int64_t in_len, int64_t out_len, Filter f, Taps* t) {
  const double scale = static_cast<double>(in_len) / static_cast<double>(out_len);
  const double fscale = std::max(scale, 1.0);
  const double support = filter_support(f) * fscale;
  t->taps = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  t->start.assign(out_len, 0);
  t->count.assign(out_len, 0);
  t->w.assign(out_len * t->taps, 0.0f);
  std::vector<double> k(t->taps);
  for (int64_t o = 0; o < out_len; ++o) {
    const double center = (static_cast<double>(o) + 0.5) * scale;
    int64_t lo = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), 0);
    int64_t hi = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), in_len);
    int64_t n = std::min<int64_t>(hi - lo, t->taps);
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      k[i] = filter_weight(f, (static_cast<double>(i + lo) - center + 0.5) / fscale);
      total += k[i];
    }
    for (int64_t i = 0; i < n; ++i) t->w[o * t->taps + i] = static_cast<float>(total != 0 ? k[i] / total : 0.0);
    t->start[o] = in0 + lo;
    t->count[o] = n;
  }
}

// Rounds half up after clamping, as PIL's fixed-point code does (and without a libm call).
inline uint8_t clip8(float v) {
  v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
  return static_cast<uint8_t>(static_cast<int>(v + 0.5f));
}

// Resamples the crop [top, top+ch) × [left, left+cw) of src [*, w, C] to dst [oh, ow, C]: a
// horizontal pass into tmp [ch, ow, C], then a vertical pass, each rounded to uint8 as PIL does.
template <int C>
void resample_c(const uint8_t* src, int64_t w, int64_t top, int64_t left, int64_t ch, int64_t cw, uint8_t* dst,
                int64_t oh, int64_t ow, Filter f, std::vector<uint8_t>* tmp, std::vector<float>* acc) {
  Taps tx, ty;
  make_taps(left, cw, ow, f, &tx);
  make_taps(top, ch, oh, f, &ty);
  tmp->resize(std::max<size_t>(tmp->size(), static_cast<size_t>(ch * ow * C)));
  uint8_t* h = tmp->data();
  for (int64_t r = 0; r < ch; ++r) {
    const uint8_t* row = src + (top + r) * w * C;
    uint8_t* out = h + r * ow * C;
    for (int64_t x = 0; x < ow; ++x) {
      const float* wt = &tx.w[x * tx.taps];
      const uint8_t* s = row + tx.start[x] * C;
      float a[C] = {};
      for (int64_t k = 0, n = tx.count[x]; k < n; ++k)
        for (int c = 0; c < C; ++c) a[c] += wt[k] * static_cast<float>(s[k * C + c]);
      for (int c = 0; c < C; ++c) out[x * C + c] = clip8(a[c]);
    }
  }
  // Vertical pass, one output row at a time, vectorizable along the row.
  const int64_t rowlen = ow * C;
  acc->resize(std::max<size_t>(acc->size(), static_cast<size_t>(rowlen)));
  float* a = acc->data();
  for (int64_t y = 0; y < oh; ++y) {
    const float* wt = &ty.w[y * ty.taps];
    const uint8_t* s = h + (ty.start[y] - top) * rowlen;
    std::fill(a, a + rowlen, 0.0f);
    for (int64_t k = 0, n = ty.count[y]; k < n; ++k) {
      const float wk = wt[k];
      const uint8_t* sk = s + k * rowlen;
      for (int64_t x = 0; x < rowlen; ++x) a[x] += wk * static_cast<float>(sk[x]);
    }
    uint8_t* out = dst + y * rowlen;
    for (int64_t x = 0; x < rowlen; ++x) out[x] = clip8(a[x]);
  }
}

struct Scratch {
  std::vector<uint8_t> resized, tmp;
  std::vector<float> acc;
};

void resample(const uint8_t* src, int64_t w, int64_t C, int64_t top, int64_t left, int64_t ch, int64_t cw,
              uint8_t* dst, int64_t oh, int64_t ow, Filter f, Scratch* scratch) {
  if (C == 1) resample_c<1>(src, w, top, left, ch, cw, dst, oh, ow, f, &scratch->tmp, &scratch->acc);
  else resample_c<3>(src, w, top, left, ch, cw, dst, oh, ow, f, &scratch->tmp, &scratch->acc);
}

// One sample: crop of the cached image → S×S (bilinear) → normalized CHW floats, flipped or not.
// lut[ch][v] = (v / 255 - mean[ch]) / std[ch], in float32 as torchvision computes it.
void render_sample(const ImageCache& cache, int64_t item, const SampleTransform& tr, int64_t S,
                   const float (*lut)[256], Scratch* scratch, float* out /* [3, S, S] */) {
  const int64_t C = cache.c;
  const uint8_t* img = cache.pixels + item * cache.h * cache.w * C;  // [h, w, C]
  const uint8_t* pix = img;                                          // [*, row_stride / C, C]
  int64_t row = cache.w * C, y0 = tr.top, x0 = tr.left;
  if (tr.height != S || tr.width != S) {  // resample; an S×S crop is copied exactly
    scratch->resized.resize(std::max<size_t>(scratch->resized.size(), static_cast<size_t>(S * S * C)));
    uint8_t* resized = scratch->resized.data();
    resample(img, cache.w, C, tr.top, tr.left, tr.height, tr.width, resized, S, S, Filter::kBilinear, scratch);
    pix = resized, row = S * C, y0 = 0, x0 = 0;
  }
  const int64_t plane = S * S;
  for (int64_t y = 0; y < S; ++y) {
    const uint8_t* r = pix + (y0 + y) * row + x0 * C;
    for (int64_t x = 0; x < S; ++x) {
      const int64_t xo = tr.flip ? S - 1 - x : x;
      for (int64_t ch = 0; ch < 3; ++ch) out[ch * plane + y * S + xo] = lut[ch][r[x * C + (C == 1 ? 0 : ch)]];
    }
  }
}

}  // namespace

SampleTransform sample_transform(const BatchSpec& spec, int64_t h, int64_t w, int64_t index) {
  Draws r(spec.seed, sample_stream(spec.epoch, static_cast<uint64_t>(index)));
  SampleTransform t{0, 0, h, w, false};
  if (spec.crop.enabled) {
    const CropSpec& c = spec.crop;
    const double area = static_cast<double>(h) * static_cast<double>(w);
    const double log_lo = std::log(c.ratio_min), log_hi = std::log(c.ratio_max);
    bool found = false;
    for (int attempt = 0; attempt < 10 && !found; ++attempt) {
      const double target = r.uniform(c.scale_min, c.scale_max) * area;
      const double aspect = std::exp(r.uniform(log_lo, log_hi));
      const int64_t cw = py_round(std::sqrt(target * aspect));
      const int64_t ch = py_round(std::sqrt(target / aspect));
      if (cw > 0 && ch > 0 && cw <= w && ch <= h) {
        t.top = r.randint(0, h - ch + 1);
        t.left = r.randint(0, w - cw + 1);
        t.height = ch;
        t.width = cw;
        found = true;
      }
    }
    if (!found) {  // centre crop, clamped to the ratio range
      const double in_ratio = static_cast<double>(w) / static_cast<double>(h);
      int64_t cw = w, ch = h;
      if (in_ratio < std::min(c.ratio_min, c.ratio_max)) {
        ch = py_round(static_cast<double>(cw) / std::min(c.ratio_min, c.ratio_max));
      } else if (in_ratio > std::max(c.ratio_min, c.ratio_max)) {
        cw = py_round(static_cast<double>(ch) * std::max(c.ratio_min, c.ratio_max));
      }
      t.top = (h - ch) / 2;
      t.left = (w - cw) / 2;
      t.height = ch;
      t.width = cw;
    }
  }
  // The flip draw comes from its own counter range, so enabling crops does not change flips.
  if (spec.flip_prob > 0) {
    Draws f(spec.seed, mix64(sample_stream(spec.epoch, static_cast<uint64_t>(index)) ^ 0x464c4950ull));
    t.flip = f.uniform() < spec.flip_prob;
  }
  return t;
}

MixInfo sample_mix(const BatchSpec& spec) {
  MixInfo m;
  const MixupSpec& x = spec.mixup;
  if (!x.enabled) return m;
  Draws r(spec.seed, mixup_stream(spec.epoch, spec.batch_index));
  const int64_t S = spec.size;
  const bool minmax = x.cutmix_min >= 0 && x.cutmix_max >= 0;
  const double cutmix_alpha = minmax ? 1.0 : x.cutmix_alpha;  // timm forces 1.0 with a min/max box
  double lam = 1.0;
  bool use_cutmix = false;
  if (r.uniform() < x.prob) {
    if (x.mixup_alpha > 0 && cutmix_alpha > 0) {
      use_cutmix = r.uniform() < x.switch_prob;
      const double a = use_cutmix ? cutmix_alpha : x.mixup_alpha;
      lam = r.beta(a, a);
    } else if (x.mixup_alpha > 0) {
      lam = r.beta(x.mixup_alpha, x.mixup_alpha);
    } else if (cutmix_alpha > 0) {
      use_cutmix = true;
      lam = r.beta(cutmix_alpha, cutmix_alpha);
    }
  }
  if (lam == 1.0) return m;  // timm: nothing is mixed
  if (use_cutmix) {
    int64_t y0, y1, x0, x1;
    if (minmax) {
      const int64_t ch = r.randint(static_cast<int64_t>(S * x.cutmix_min), static_cast<int64_t>(S * x.cutmix_max));
      const int64_t cw = r.randint(static_cast<int64_t>(S * x.cutmix_min), static_cast<int64_t>(S * x.cutmix_max));
      y0 = r.randint(0, S - ch);
      x0 = r.randint(0, S - cw);
      y1 = y0 + ch;
      x1 = x0 + cw;
    } else {
      const double ratio = std::sqrt(1.0 - lam);
      const int64_t ch = static_cast<int64_t>(S * ratio), cw = static_cast<int64_t>(S * ratio);
      const int64_t cy = r.randint(0, S), cx = r.randint(0, S);
      y0 = std::clamp<int64_t>(cy - ch / 2, 0, S);
      y1 = std::clamp<int64_t>(cy + ch / 2, 0, S);
      x0 = std::clamp<int64_t>(cx - cw / 2, 0, S);
      x1 = std::clamp<int64_t>(cx + cw / 2, 0, S);
    }
    if (x.correct_lam || minmax)
      lam = 1.0 - static_cast<double>((y1 - y0) * (x1 - x0)) / static_cast<double>(S * S);
    m.cutmix = true;
    m.y0 = y0, m.y1 = y1, m.x0 = x0, m.x1 = x1;
  }
  m.lam = lam;
  return m;
}

Status assemble_batch(const ImageCache& cache, const int32_t* indices, int64_t B, const int32_t* labels,
                      const BatchSpec& spec, float* images, float* soft_targets, MixInfo* info) {
  const int64_t S = spec.size;
  if (S <= 0) return InvalidArgument("expected a positive image size for size, got " + std::to_string(S));
  if (cache.c != 1 && cache.c != 3)
    return InvalidArgument("expected 1 or 3 channels for the image cache, got " + std::to_string(cache.c));
  if (cache.h <= 0 || cache.w <= 0) return InvalidArgument("expected a non-empty image size for the image cache");
  if (B <= 0) return InvalidArgument("expected at least one index for indices, got " + std::to_string(B));
  for (int ch = 0; ch < 3; ++ch)
    if (!(spec.std[ch] != 0.0f) || !std::isfinite(spec.std[ch]) || !std::isfinite(spec.mean[ch]))
      return InvalidArgument("expected finite mean and non-zero finite std for normalization");
  for (int64_t b = 0; b < B; ++b)
    if (indices[b] < 0 || indices[b] >= cache.n)
      return OutOfRange("expected dataset indices in [0, " + std::to_string(cache.n) + ") for indices, got " +
                        std::to_string(indices[b]) + " at position " + std::to_string(b));
  if (soft_targets) {
    if (spec.num_classes <= 0) return InvalidArgument("expected a positive numClasses for soft targets");
    for (int64_t b = 0; b < B; ++b)
      if (labels[b] < 0 || labels[b] >= spec.num_classes)
        return OutOfRange("expected labels in [0, " + std::to_string(spec.num_classes) + ") for labels, got " +
                          std::to_string(labels[b]) + " at position " + std::to_string(b));
  }

  float lut[3][256];
  for (int ch = 0; ch < 3; ++ch)
    for (int v = 0; v < 256; ++v) lut[ch][v] = (static_cast<float>(v) / 255.0f - spec.mean[ch]) / spec.std[ch];

  const int64_t frame = 3 * S * S;
  Scratch scratch;
  for (int64_t b = 0; b < B; ++b) {
    const SampleTransform tr = sample_transform(spec, cache.h, cache.w, indices[b]);
    render_sample(cache, indices[b], tr, S, lut, &scratch, images + b * frame);
  }

  MixInfo m = sample_mix(spec);
  if (m.lam != 1.0) {
    const float lam = static_cast<float>(m.lam), rest = static_cast<float>(1.0 - m.lam);
    for (int64_t i = 0, j = B - 1; i < j; ++i, --j) {
      float* a = images + i * frame;
      float* c = images + j * frame;
      if (m.cutmix) {
        for (int64_t ch = 0; ch < 3; ++ch)
          for (int64_t y = m.y0; y < m.y1; ++y)
            for (int64_t x = m.x0; x < m.x1; ++x) std::swap(a[(ch * S + y) * S + x], c[(ch * S + y) * S + x]);
      } else {
        for (int64_t k = 0; k < frame; ++k) {
          const float va = a[k], vc = c[k];
          a[k] = va * lam + vc * rest;
          c[k] = vc * lam + va * rest;
        }
      }
    }
  }
  if (soft_targets) {
    const int64_t C = spec.num_classes;
    const double smoothing = spec.mixup.enabled ? spec.mixup.smoothing : 0.0;
    const float off = static_cast<float>(smoothing / static_cast<double>(C));
    const float on = static_cast<float>(1.0 - smoothing + smoothing / static_cast<double>(C));
    const float lam = static_cast<float>(m.lam), rest = static_cast<float>(1.0 - m.lam);
    for (int64_t b = 0; b < B; ++b) {
      float* row = soft_targets + b * C;
      const int32_t own = labels[b], other = labels[B - 1 - b];
      for (int64_t k = 0; k < C; ++k) {
        const float y1 = k == own ? on : off, y2 = k == other ? on : off;
        row[k] = y1 * lam + y2 * rest;
      }
    }
  }
  if (info) *info = m;
  return Status::Ok();
}

Status resize_images(const ImageCache& src, int64_t first, int64_t count, int64_t oh, int64_t ow, Filter filter,
                     uint8_t* dst) {
  if (oh <= 0 || ow <= 0) return InvalidArgument("expected a positive output size for resize");
  if (first < 0 || count < 0 || first + count > src.n)
    return OutOfRange("expected images [" + std::to_string(first) + ", " + std::to_string(first + count) +
                      ") to lie in [0, " + std::to_string(src.n) + ")");
  const int64_t in_frame = src.h * src.w * src.c, out_frame = oh * ow * src.c;
  Scratch scratch;
  for (int64_t i = first; i < first + count; ++i)
    resample(src.pixels + i * in_frame, src.w, src.c, 0, 0, src.h, src.w, dst + (i - first) * out_frame, oh, ow,
             filter, &scratch);
  return Status::Ok();
}

Status permutation(int64_t n, uint64_t seed, uint64_t epoch, int32_t* out) {
  if (n < 0 || n > INT32_MAX) return InvalidArgument("expected a dataset size in [0, 2^31) for n, got " + std::to_string(n));
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(i);
  Draws r(seed, mix64(kShuffleStream + epoch));
  for (int64_t i = n - 1; i > 0; --i) std::swap(out[i], out[r.randint(0, i + 1)]);
  return Status::Ok();
}

}  // namespace data
}  // namespace repadapter

