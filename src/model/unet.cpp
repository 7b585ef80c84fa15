#include "model/unet.h"

#include <cmath>
#include <cstring>

#include "ddpm/ops.h"

namespace ddpm {
namespace {

std::string shape_text(int rank, const int64_t* shape) {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

enum class Resample { None, Down, Up };

// Small constants the graph reads (scale_shift's +1, center_input_sample's −1). Parameters reference caller-owned
// memory; these outlive every graph.
const float kConstants[2] = {1.0f, -1.0f};

// Builds the network node by node; the first error (a missing or mis-shaped weight) is kept and reported.
class Builder {
 public:
  Builder(Graph& g, const UNetConfig& c, const WeightLookup& lookup, std::vector<std::pair<std::string, Tensor*>>* taps)
      : g_(g), c_(c), lookup_(lookup), taps_(taps) {}

  // Records a module's output under its diffusers name (only when intermediates are kept).
  Tensor* tap(const std::string& module, Tensor* t) {
    if (taps_ && t) {
      taps_->push_back({module, t});
      g_.set_output(t);
    }
    return t;
  }

  Status error() const { return error_.ok() ? g_.status() : error_; }

  // Block-quantised types (q8_0, …) only where the op multiplies with them as a weight matrix: conv and linear.
  Tensor* weight(const std::string& name, std::initializer_list<int64_t> shape, bool block_types_allowed = false) {
    if (!error_.ok()) return nullptr;
    WeightRef ref;
    Status found = lookup_(name, std::vector<int64_t>(shape), &ref);
    if (!found.ok()) {
      error_ = errorf("missing tensor '%s' (expected shape %s): %s", name.c_str(),
                      shape_text(static_cast<int>(shape.size()), shape.begin()).c_str(), found.message().c_str());
      return nullptr;
    }
    bool same = ref.rank == static_cast<int>(shape.size());
    for (int i = 0; same && i < ref.rank; ++i) same = ref.shape[i] == shape.begin()[i];
    if (!same) {
      error_ = errorf("tensor '%s' has shape %s, expected %s", name.c_str(), shape_text(ref.rank, ref.shape).c_str(),
                      shape_text(static_cast<int>(shape.size()), shape.begin()).c_str());
      return nullptr;
    }
    const bool block_type = dtype_traits(ref.dtype).is_quantized;
    if (ref.dtype != DType::F32 && ref.dtype != DType::F16 && !(block_type && block_types_allowed)) {
      error_ = errorf("tensor '%s' has type %s, which the U-Net cannot use%s", name.c_str(), dtype_name(ref.dtype),
                      block_type ? " (block types only for conv and linear weights)" : "");
      return nullptr;
    }
    Tensor* t = g_.param(name, ref.dtype, ref.rank, ref.shape, ref.data);
    if (t && ref.mapped) t->flags |= kFlagMapped;
    if (t && ref.frozen) t->flags |= kFlagFrozen;
    if (t && ref.tap_major) t->flags |= kFlagTapMajor;
    if (t && ref.int8_winograd && block_type) t->flags |= kFlagInt8Winograd;
    return t;
  }

  int64_t groups() const { return *c_.norm_num_groups; }
  float eps() const { return static_cast<float>(c_.norm_eps); }

  Tensor* group_norm(const std::string& prefix, Tensor* x, int64_t channels, int64_t groups, bool silu,
                     Tensor* channel_bias = nullptr) {
    Tensor* gamma = weight(prefix + ".weight", {channels});
    Tensor* beta = weight(prefix + ".bias", {channels});
    return ddpm::group_norm(g_, x, static_cast<int>(groups), eps(), gamma, beta, silu, channel_bias);
  }

  Tensor* conv(const std::string& prefix, Tensor* x, int64_t c_in, int64_t c_out, int64_t k, const Conv2dParams& p,
               Tensor* residual = nullptr) {
    Tensor* w = weight(prefix + ".weight", {c_out, c_in, k, k}, true);
    Tensor* b = weight(prefix + ".bias", {c_out});
    return conv2d(g_, x, w, b, p, residual);
  }

  Tensor* linear(const std::string& prefix, Tensor* x, int64_t in, int64_t out) {
    Tensor* w = weight(prefix + ".weight", {out, in}, true);
    Tensor* b = weight(prefix + ".bias", {out});
    return ddpm::linear(g_, x, w, b);
  }

  // Sinusoidal projection then the two-layer MLP: linear_2(silu(linear_1(E))).
  Tensor* embedding_mlp(const std::string& prefix, Tensor* projected) {
    const int64_t c0 = c_.block_out_channels[0], dim = c_.time_embed_dim();
    Tensor* h = linear(prefix + ".linear_1", projected, c0, dim);  // [B, D]
    return linear(prefix + ".linear_2", silu(g_, h), dim, dim);     // [B, D]
  }

  Tensor* resample(Tensor* x, Resample r) {
    if (r == Resample::Down) return avg_pool2x(g_, x);
    if (r == Resample::Up) return upsample_nearest2x(g_, x);
    return x;
  }

  // ResnetBlock2D (§1.7): x [B, c_in, H, W] → [B, c_out, H', W'].
  Tensor* resnet(const std::string& p, Tensor* x, int64_t c_in, int64_t c_out, double output_scale,
                 Resample r = Resample::None) {
    const bool scale_shift = c_.resnet_time_scale_shift == "scale_shift";
    Tensor* h = group_norm(p + ".norm1", x, c_in, groups(), /*silu=*/true);  // [B, c_in, H, W]
    h = resample(h, r);
    x = resample(x, r);
    h = conv(p + ".conv1", h, c_in, c_out, 3, conv_same3x3());               // [B, c_out, H', W']
    Tensor* e = linear(p + ".time_emb_proj", emb_act_, c_.time_embed_dim(), scale_shift ? 2 * c_out : c_out);
    if (!scale_shift && inference_only_fusions_) {
      h = group_norm(p + ".norm2", h, c_out, groups(), /*silu=*/true, /*channel_bias=*/e);  // norm2(h + e)
    } else if (!scale_shift) {
      h = add(g_, h, reshape(g_, e, {batch_, c_out, 1, 1}));
      h = group_norm(p + ".norm2", h, c_out, groups(), /*silu=*/true);
    } else {
      Tensor* scale_plus_one = add(g_, reshape(g_, slice(g_, e, 1, 0, c_out), {batch_, c_out, 1, 1}), one_);
      Tensor* shift = reshape(g_, slice(g_, e, 1, c_out, c_out), {batch_, c_out, 1, 1});
      h = group_norm(p + ".norm2", h, c_out, groups(), /*silu=*/false);
      h = silu(g_, add(g_, mul(g_, h, scale_plus_one), shift));
    }
    // dropout is the identity at inference
    Tensor* skip = x;
    if (c_in != c_out) skip = conv(p + ".conv_shortcut", x, c_in, c_out, 1, Conv2dParams{});
    h = conv(p + ".conv2", h, c_out, c_out, 3, conv_same3x3(), skip);  // conv2(h) + skip, fused
    if (output_scale != 1.0) h = scale(g_, h, static_cast<float>(1.0 / output_scale));
    return tap(p, h);
  }

  // Self-attention over the H·W positions (§1.8), computed channel-major so every projection is a 1×1 conv and
  // the output projection adds the residual in the same pass.
  Tensor* attention(const std::string& p, Tensor* x, int64_t channels, bool has_norm, int64_t norm_groups,
                    double rescale) {
    if (!x) return nullptr;  // an earlier error: keep building nothing
    const int64_t head_dim = c_.attention_head_dim.value_or(channels);
    const int64_t heads = channels / head_dim;
    const int64_t inner = heads * head_dim;
    const int64_t h = x->shape[2], w = x->shape[3], n = h * w;
    Tensor* xn = has_norm ? group_norm(p + ".group_norm", x, channels, norm_groups, false) : x;  // [B, C, H, W]
    auto projection = [&](const char* name, Tensor* input, int64_t in, int64_t out, Tensor* residual) {
      Tensor* wt = weight(p + "." + name + ".weight", {out, in}, true);
      Tensor* b = weight(p + "." + name + ".bias", {out});
      return conv2d(g_, input, reshape(g_, wt, {out, in, 1, 1}), b, Conv2dParams{}, residual);
    };
    Tensor* qt = projection("to_q", xn, channels, inner, nullptr);  // Qᵀ [B, inner, H, W]
    Tensor* kt = projection("to_k", xn, channels, inner, nullptr);  // Kᵀ
    Tensor* vt = projection("to_v", xn, channels, inner, nullptr);  // Vᵀ
    qt = reshape(g_, qt, {batch_, heads, head_dim, n});             // [B, heads, d, N]
    kt = reshape(g_, kt, {batch_, heads, head_dim, n});
    vt = reshape(g_, vt, {batch_, heads, head_dim, n});
    Tensor* scores = matmul(g_, permute(g_, qt, {0, 1, 3, 2}), kt);  // Q·Kᵀ [B, heads, N, N]
    Tensor* probs = softmax(g_, scores, static_cast<float>(1.0 / std::sqrt(double(head_dim))));
    Tensor* out_t = matmul(g_, vt, permute(g_, probs, {0, 1, 3, 2}));  // (P·V)ᵀ = Vᵀ·Pᵀ [B, heads, d, N]
    out_t = reshape(g_, out_t, {batch_, inner, h, w});
    Tensor* y = projection("to_out.0", out_t, inner, channels, x);     // W_o·Oᵀ + b + residual [B, C, H, W]
    if (rescale != 1.0) y = scale(g_, y, static_cast<float>(1.0 / rescale));
    return tap(p, y);
  }

  Tensor* build(Tensor* sample, Tensor* timesteps, Tensor* labels) {
    const UNetConfig& c = c_;
    const std::vector<int64_t>& boc = c.block_out_channels;
    const int64_t levels = static_cast<int64_t>(boc.size());
    const int64_t L = c.layers_per_block;
    one_ = g_.param("constant.one", DType::F32, {1}, &kConstants[0]);
    Tensor* x = sample;  // [B, Cin, H, W]
    if (c.center_input_sample) {
      x = add(g_, scale(g_, x, 2.0f), g_.param("constant.minus_one", DType::F32, {1}, &kConstants[1]));
    }
    // Time: sinusoidal projection [B, C0] → MLP [B, D]; class embedding added after the MLP.
    Tensor* projected = timestep_embedding(g_, timesteps, static_cast<int>(boc[0]), c.flip_sin_to_cos,
                                           static_cast<float>(c.freq_shift));
    tap("time_proj", projected);
    Tensor* emb = tap("time_embedding", embedding_mlp("time_embedding", projected));
    if (c.is_class_conditional()) {
      Tensor* class_emb = nullptr;
      if (c.class_embed_type == "timestep") {
        class_emb = embedding_mlp("class_embedding",
                                  timestep_embedding(g_, labels, static_cast<int>(boc[0]), c.flip_sin_to_cos,
                                                     static_cast<float>(c.freq_shift)));
      } else if (c.class_embed_type == "identity") {
        class_emb = labels;
      } else {
        class_emb = get_rows(g_, weight("class_embedding.weight", {*c.num_class_embeds, c.time_embed_dim()}), labels);
      }
      emb = add(g_, emb, class_emb);
    }
    emb_act_ = silu(g_, emb);  // every resnet applies the activation to emb first: compute it once

    Tensor* h = tap("conv_in", conv("conv_in", x, c.in_channels, boc[0], 3, conv_same3x3()));
    std::vector<Tensor*> skips = {h};
    const Conv2dParams down_conv =
        c.downsample_padding == 1 ? Conv2dParams{2, 1, 1, 1, 1} : Conv2dParams{2, 0, 0, 1, 1};
    for (int64_t i = 0; i < levels; ++i) {
      const std::string p = "down_blocks." + std::to_string(i);
      const bool attn = c.down_block_types[i] == "AttnDownBlock2D";
      const int64_t c_out = boc[i];
      for (int64_t j = 0; j < L; ++j) {
        const int64_t c_in = j == 0 ? (i == 0 ? boc[0] : boc[i - 1]) : c_out;
        h = resnet(p + ".resnets." + std::to_string(j), h, c_in, c_out, 1.0);
        if (attn) h = attention(p + ".attentions." + std::to_string(j), h, c_out, true, groups(), 1.0);
        skips.push_back(h);
      }
      if (i < levels - 1) {
        if (attn && c.downsample_type == "resnet") {
          h = resnet(p + ".downsamplers.0", h, c_out, c_out, 1.0, Resample::Down);
        } else {
          h = tap(p + ".downsamplers.0", conv(p + ".downsamplers.0.conv", h, c_out, c_out, 3, down_conv));
        }
        skips.push_back(h);
      }
      tap(p, h);
    }
    if (!c.mid_block_type.empty()) {
      const int64_t ch = boc.back();
      const double s = c.mid_block_scale_factor;
      h = resnet("mid_block.resnets.0", h, ch, ch, s);
      if (c.add_attention) {
        const bool has_norm = c.attn_norm_num_groups.has_value() || c.resnet_time_scale_shift == "default";
        const int64_t attn_groups = c.attn_norm_num_groups.value_or(groups());
        h = attention("mid_block.attentions.0", h, ch, has_norm, attn_groups, s);
      }
      h = tap("mid_block", resnet("mid_block.resnets.1", h, ch, ch, s));
    }
    for (int64_t i = 0; i < levels; ++i) {
      const std::string p = "up_blocks." + std::to_string(i);
      const bool attn = c.up_block_types[i] == "AttnUpBlock2D";
      const int64_t c_out = boc[levels - 1 - i];
      const int64_t prev = boc[levels - 1 - (i == 0 ? 0 : i - 1)];
      const int64_t skip_last = boc[levels - 1 - std::min(i + 1, levels - 1)];
      for (int64_t j = 0; j <= L; ++j) {
        if (skips.empty()) {
          error_ = errorf("internal: skip stack exhausted at %s", p.c_str());
          return nullptr;
        }
        Tensor* skip = skips.back();
        skips.pop_back();
        const int64_t c_in = (j == 0 ? prev : c_out) + (j == L ? skip_last : c_out);
        h = concat_channels(g_, h, skip);  // running state first, skip second
        h = resnet(p + ".resnets." + std::to_string(j), h, c_in, c_out, 1.0);
        if (attn) h = attention(p + ".attentions." + std::to_string(j), h, c_out, true, groups(), 1.0);
      }
      if (i < levels - 1) {
        if (attn && c.upsample_type == "resnet") {
          h = resnet(p + ".upsamplers.0", h, c_out, c_out, 1.0, Resample::Up);
        } else {
          h = tap(p + ".upsamplers.0",
                  conv(p + ".upsamplers.0.conv", upsample_nearest2x(g_, h), c_out, c_out, 3, conv_same3x3()));
        }
      }
      tap(p, h);
    }
    h = tap("conv_act", group_norm("conv_norm_out", h, boc[0], groups(), /*silu=*/true));  // norm + act, fused
    return tap("conv_out", conv("conv_out", h, boc[0], c.out_channels, 3, conv_same3x3()));  // [B, out_channels, H, W]
  }

  int64_t batch_ = 1;
  bool inference_only_fusions_ = false;  // build_unet_graph's

 private:
  Graph& g_;
  const UNetConfig& c_;
  const WeightLookup& lookup_;
  Status error_;
  Tensor* emb_act_ = nullptr;
  Tensor* one_ = nullptr;
  std::vector<std::pair<std::string, Tensor*>>* taps_;
};

}  // namespace

Status build_unet_graph(Graph& g, const UNetConfig& config, const WeightLookup& lookup, int64_t batch, int64_t height,
                        int64_t width, UNetGraphParts* out, std::vector<std::pair<std::string, Tensor*>>* taps,
                        bool inference_only_fusions) {
  DDPM_TRY(config.validate());
  const int64_t multiple = config.spatial_multiple();
  if (batch < 1 || height < 1 || width < 1 || height % multiple != 0 || width % multiple != 0) {
    return errorf("input size %lldx%lld must be a positive multiple of %lld for %zu U-Net levels", (long long)height,
                  (long long)width, (long long)multiple, config.block_out_channels.size());
  }
  UNetGraphParts parts;
  parts.sample = g.input("sample", DType::F32, {batch, config.in_channels, height, width});
  parts.timesteps = g.input("timesteps", DType::F32, {batch});
  if (config.has_class_table()) parts.class_labels = g.input("class_labels", DType::I32, {batch});
  else if (config.class_embed_type == "timestep") parts.class_labels = g.input("class_labels", DType::F32, {batch});
  else if (config.class_embed_type == "identity") {
    parts.class_labels = g.input("class_labels", DType::F32, {batch, config.time_embed_dim()});
  }
  Builder builder(g, config, lookup, taps);
  builder.batch_ = batch;
  builder.inference_only_fusions_ = inference_only_fusions;
  parts.output = builder.build(parts.sample, parts.timesteps, parts.class_labels);
  DDPM_TRY(builder.error());
  g.set_output(parts.output);
  *out = parts;
  return Status();
}

Status UNet::build(const UNetConfig& config, const WeightLookup& lookup, int64_t batch, int64_t height, int64_t width,
                   std::unique_ptr<UNet>* out, bool keep_intermediates) {
  std::unique_ptr<UNet> net(new UNet());
  net->config_ = config;
  net->batch_ = batch;
  UNetGraphParts parts;
  DDPM_TRY(build_unet_graph(net->graph_, net->config_, lookup, batch, height, width, &parts,
                            keep_intermediates ? &net->taps_ : nullptr, /*inference_only_fusions=*/true));
  net->sample_ = parts.sample;
  net->timesteps_ = parts.timesteps;
  net->class_labels_ = parts.class_labels;
  net->output_ = parts.output;
  DDPM_TRY(net->graph_.plan());
  *out = std::move(net);
  return Status();
}

Status UNet::forward(ThreadPool& pool, const float* sample, const float* timesteps, const void* class_labels,
                     float* out) {
  std::memcpy(sample_->data, sample, dtype_row_bytes(DType::F32, sample_->numel()));
  std::memcpy(timesteps_->data, timesteps, sizeof(float) * static_cast<size_t>(batch_));
  if (class_labels_) {
    if (!class_labels) return errorf("this model is class-conditional: class labels are required");
    std::memcpy(class_labels_->data, class_labels, dtype_row_bytes(class_labels_->dtype, class_labels_->numel()));
  } else if (class_labels) {
    return errorf("this model has no class embedding: class labels cannot be used");
  }
  DDPM_TRY(graph_.compute(pool));
  std::memcpy(out, output_->data, dtype_row_bytes(DType::F32, output_->numel()));
  return Status();
}

const Tensor* UNet::intermediate(const std::string& module) const {
  for (const auto& [name, t] : taps_) {
    if (name == module) return t;
  }
  return nullptr;
}

Status unet_parameter_specs(const UNetConfig& config, std::vector<ParamSpec>* out) {
  // Build once, at the smallest valid size, against a lookup that answers every request with zeros of the
  // expected shape and records it.
  std::vector<ParamSpec> specs;
  // Building and planning never read parameter data, so the recorded weights get none (no zero-filled copy of
  // the whole model, which would double a loader's peak memory).
  WeightLookup recording = [&](const std::string& name, const std::vector<int64_t>& expected, WeightRef* ref) {
    specs.push_back({name, expected});
    ref->dtype = DType::F32;
    ref->rank = static_cast<int>(expected.size());
    for (int i = 0; i < ref->rank; ++i) ref->shape[i] = expected[i];
    ref->data = nullptr;
    return Status();
  };
  std::unique_ptr<UNet> net;
  const int64_t size = config.spatial_multiple();
  DDPM_TRY(UNet::build(config, recording, 1, size, size, &net));
  *out = std::move(specs);
  return Status();
}

}  // namespace ddpm
