#include "model/convert.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>
#include <set>

#include "ddpm/graph.h"
#include "io/atomic_file.h"
#include "io/json.h"
#include "io/sha256.h"
#include "io/tensor_loader.h"
#include "model/ddpm_file.h"
#include "model/model.h"
#include "model/scheduler_json.h"
#include "model/unet.h"

#ifndef DDPM_VERSION
#define DDPM_VERSION "0.1.0"
#endif

namespace ddpm {
namespace {

bool is_directory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Finds config, weights and scheduler config of a diffusers folder (root layout, or a pipeline's unet/ and
// scheduler/ sub-folders).
Status resolve_folder(const std::string& dir, ConvertOptions* o, std::string* weights) {
  for (const std::string& model_dir : {dir, dir + "/unet"}) {
    if (!is_file(model_dir + "/config.json")) continue;
    for (const char* name : {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                             "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin"}) {
      if (is_file(model_dir + "/" + name)) {
        *weights = model_dir + "/" + name;
        break;
      }
    }
    if (weights->empty()) return errorf("%s: has config.json but no diffusion_pytorch_model.{safetensors,bin}", model_dir.c_str());
    if (o->config.empty()) o->config = model_dir + "/config.json";
    if (o->scheduler_config.empty()) {
      for (const std::string& s : {dir + "/scheduler_config.json", dir + "/scheduler/scheduler_config.json",
                                   model_dir + "/scheduler_config.json"}) {
        if (is_file(s)) {
          o->scheduler_config = s;
          break;
        }
      }
    }
    return Status();
  }
  return errorf("%s: not a diffusers model folder (no config.json at its root or in unet/)", dir.c_str());
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string utc_now() {
  std::time_t now = std::time(nullptr);
  std::tm tm;
  gmtime_r(&now, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buffer;
}

std::string base_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string join_limited(const std::vector<std::string>& items, size_t limit) {
  std::string s;
  for (size_t i = 0; i < items.size() && i < limit; ++i) s += (i ? ", " : "") + items[i];
  if (items.size() > limit) s += " (+" + std::to_string(items.size() - limit) + " more)";
  return s;
}

// Conversion reads every byte of the checkpoint once, in no useful order, through a mapping; pages of a mapped file
// count towards the resident set while mapped, so without help a 143 MB checkpoint would keep 143 MB resident to
// the end. Dropping a range once it has been read keeps the peak near one tensor (the file stays in the page cache,
// so a second read of the same pages costs a minor fault, not I/O). Advisory: failures are ignored, and files read
// into memory (not mapped) are left alone.
void release_pages(const MappedFile& file, uint64_t offset, uint64_t bytes) {
  if (!file.is_mapped() || bytes == 0 || offset >= file.size()) return;
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE) > 0 ? sysconf(_SC_PAGESIZE) : 4096);
  const uintptr_t base = reinterpret_cast<uintptr_t>(file.data());
  const uintptr_t begin = (base + offset) & ~(page - 1);
  const uintptr_t end = base + std::min<uint64_t>(file.size(), offset + std::min(bytes, file.size() - offset));
  // Whole pages only, rounded outwards: neighbours' pages are dropped too, which is harmless for a read-only
  // private mapping (they fault back in from the page cache). The mapping itself starts page-aligned.
  const uintptr_t last = (end + page - 1) & ~(page - 1);
  madvise(reinterpret_cast<void*>(begin), last - begin, MADV_DONTNEED);
}

// The SHA-256 of the whole checkpoint for the provenance metadata, in chunks whose pages are released as we go.
std::string file_sha256(const MappedFile& file) {
  constexpr uint64_t kChunk = 8 << 20;
  Sha256 hash;
  for (uint64_t at = 0; at < file.size(); at += kChunk) {
    const uint64_t n = std::min(kChunk, file.size() - at);
    hash.update(file.data() + at, static_cast<size_t>(n));
    release_pages(file, at, n);
  }
  return hash.hex_digest();
}

}  // namespace

Status resolve_convert_inputs(ConvertOptions* o, std::string* weights) {
  // "folder/" as a shell completes it: the paths built from it (and printed) read "folder/config.json".
  while (o->input.size() > 1 && o->input.back() == '/') o->input.pop_back();
  if (is_directory(o->input)) return resolve_folder(o->input, o, weights);
  if (!is_file(o->input)) return errorf("%s: no such file or folder", o->input.c_str());
  *weights = o->input;
  if (o->config.empty()) {
    const size_t slash = o->input.find_last_of('/');
    const std::string sibling =
        (slash == std::string::npos ? std::string(".") : o->input.substr(0, slash)) + "/config.json";
    if (is_file(sibling)) o->config = sibling;
  }
  return Status();
}

Status convert_checkpoint(const ConvertOptions& options, ConvertReport* report) {
  const auto start = std::chrono::steady_clock::now();
  ConvertOptions o = options;
  *report = ConvertReport();
  quant::TypePolicy policy;
  {
    DType checked;
    DDPM_TRY(quant::parse_weight_type("--type", dtype_name(o.type), &checked));
    policy.set_default_type(checked);
  }
  for (const std::string& k : o.keep) DDPM_TRY(policy.add_keep(k));
  for (const std::string& t : o.tensor_types) DDPM_TRY(policy.add_override(t));
  std::string weights;
  DDPM_TRY(resolve_convert_inputs(&o, &weights));
  report->weights_path = weights;
  DDPM_TRY(check_distinct_paths(o.output, weights, "the checkpoint"));
  DDPM_TRY(check_distinct_paths(o.output, o.config, "the config"));
  DDPM_TRY(check_distinct_paths(o.output, o.scheduler_config, "the scheduler config"));
  DDPM_TRY(check_can_write(o.output));  // before the conversion's work
  CheckpointReader reader;
  DDPM_TRY(reader.open(weights, o.checkpoint));
  report->format = reader.format();

  ModelInfo info;
  Status s;
  if (!o.config.empty()) {
    report->config_path = o.config;
    JsonValue config_json;
    DDPM_TRY(read_json_file(o.config, &config_json));
    s = UNetConfig::from_json(config_json, &info.unet);
    if (s.ok()) s = info.unet.validate();
    if (!s.ok()) return errorf("%s: %s", o.config.c_str(), s.message().c_str());
  } else if (reader.layout() == KeyLayout::OriginalDdpm) {
    report->config_path = "(inferred from tensor shapes)";
    s = infer_original_ddpm_config(reader.tensors(), o.image_size, &info.unet, &report->notes);
    if (!s.ok()) return errorf("%s: %s", weights.c_str(), s.message().c_str());
  } else {
    return errorf("%s: a bare diffusers checkpoint needs --config config.json", weights.c_str());
  }
  if (o.image_size > 0 && !o.config.empty()) {
    report->notes.push_back("--image-size " + std::to_string(o.image_size) + " replaces the config's sample_size " +
                            std::to_string(info.unet.sample_size.empty() ? 0 : info.unet.sample_size[0]));
  }
  if (o.image_size > 0) info.unet.sample_size = {o.image_size};
  if (!o.scheduler_config.empty()) {
    JsonValue scheduler_json;
    DDPM_TRY(read_json_file(o.scheduler_config, &scheduler_json));
    s = scheduler_config_from_json(scheduler_json, &info.scheduler);
    if (!s.ok()) return errorf("%s: %s", o.scheduler_config.c_str(), s.message().c_str());
    report->scheduler_path = o.scheduler_config;
  } else {
    report->notes.push_back("no scheduler_config.json found: using DDPMScheduler defaults (linear 1e-4..0.02, 1000 "
                            "steps, fixed_small, clip_sample)");
  }
  if (info.unet.sample_size.empty()) {
    return errorf("%s: sample_size is null, so the image size is unknown; set it in the config", o.config.c_str());
  }
  info.height = info.unet.sample_size[0];
  info.width = info.unet.sample_size.back();
  info.channels = info.unet.in_channels;
  info.class_names = o.class_names;
  if (o.null_class >= 0) info.null_class = o.null_class;
  if (o.null_class >= info.class_count()) {
    return errorf("--null-class %d: the model has %lld class embeddings (num_class_embeds)", o.null_class,
                  (long long)info.class_count());
  }

  if (reader.layout() != KeyLayout::Diffusers) report->notes.push_back(std::string("key layout: ") + key_layout_name(reader.layout()));
  for (const auto& [from, to] : reader.renamed()) {
    if (report->notes.size() < 8) report->notes.push_back("renamed " + from + " -> " + to);
  }
  if (reader.renamed().size() > 0) {
    report->notes.push_back(std::to_string(reader.renamed().size()) + " tensor names normalised to current diffusers keys");
  }

  std::vector<ParamSpec> specs;
  DDPM_TRY(unet_parameter_specs(info.unet, &specs));
  std::vector<std::string> missing, misshaped, unexpected;
  std::set<std::string> wanted;
  for (const ParamSpec& spec : specs) {
    wanted.insert(spec.name);
    const SourceTensor* t = reader.find(spec.name);
    if (!t) {
      missing.push_back(spec.name + " " + shape_text(spec.shape));
      continue;
    }
    const bool squeezable = spec.shape.size() == 2 && t->shape.size() == 4 && t->shape[0] == spec.shape[0] &&
                            t->shape[1] == spec.shape[1] && t->shape[2] == 1 && t->shape[3] == 1;
    if (t->shape != spec.shape && !squeezable) {
      misshaped.push_back(spec.name + " is " + shape_text(t->shape) + ", expected " + shape_text(spec.shape));
    }
  }
  for (const SourceTensor& t : reader.tensors()) {
    if (!wanted.count(t.name)) unexpected.push_back(t.name);
  }
  if (!missing.empty() || !misshaped.empty() || !unexpected.empty()) {
    std::string message = weights + ": does not match " + report->config_path + ":";
    if (!missing.empty()) message += " missing " + join_limited(missing, 5) + ";";
    if (!misshaped.empty()) message += " wrong shape: " + join_limited(misshaped, 5) + ";";
    if (!unexpected.empty()) message += " unexpected " + join_limited(unexpected, 5) + ";";
    message.pop_back();
    return Status::Error(message);
  }

  DdpmWriter writer;
  writer.set_tap_major_conv_rows(true);  // block-typed conv weights are encoded tap-major below
  DdpmMetadata metadata;
  DDPM_TRY(model_info_to_metadata(info, &metadata));
  DDPM_TRY(metadata.set("provenance.tool", MetadataValue::string(std::string("ddpm.cpp ") + DDPM_VERSION)));
  DDPM_TRY(metadata.set("provenance.source_file", MetadataValue::string(base_name(weights))));
  DDPM_TRY(metadata.set("provenance.source_sha256",
                        MetadataValue::string(file_sha256(reader.file()))));
  report->recipe = policy.recipe();
  DDPM_TRY(metadata.set("provenance.dtype_recipe", MetadataValue::string(report->recipe)));
  DDPM_TRY(metadata.set("provenance.created", MetadataValue::string(utc_now())));
  writer.set_metadata(std::move(metadata));

  // Tensors are streamed: the writer converts each into its own reused buffer while it writes (twice, see
  // DdpmWriter::add_tensor), so memory holds one tensor at a time, never the whole converted model.
  const MappedFile& file = reader.file();
  std::vector<float> scratch, check;  // f32 staging and the decoded result, the size of the largest such tensor
  quant::RetypeReport& retype = report->retype;
  retype.input_bytes = file.size();
  retype.tensors.resize(specs.size());
  std::vector<bool> measured(specs.size(), false);
  {
    std::vector<std::string> names;
    for (const ParamSpec& spec : specs) names.push_back(spec.name);
    policy.set_tensor_names(names);  // as retype_model does, so convert --type T = convert + quantize --type T
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    const ParamSpec& spec = specs[i];
    const SourceTensor* t = reader.find(spec.name);
    const int rank = static_cast<int>(spec.shape.size());
    // The policy sees every tensor as f32, the type it keeps tensors in.
    const quant::TypePolicy::Decision decision = policy.decide(spec.name, rank, spec.shape.data(), DType::F32);
    const DType dtype = decision.type;
    quant::TensorRetype& entry = retype.tensors[i];
    entry.name = spec.name;
    entry.rank = rank;
    std::copy(spec.shape.begin(), spec.shape.end(), entry.shape);
    entry.from = t->dtype == SourceDType::F16 ? DType::F16 : DType::F32;
    entry.to = dtype;
    entry.reason = decision.reason;
    entry.bytes_from = dtype_tensor_bytes(entry.from, rank, spec.shape.data());
    entry.bytes_to = dtype_tensor_bytes(dtype, rank, spec.shape.data());
    Status shape_ok = quant::check_encodable(spec.name, dtype, rank, spec.shape.data(), nullptr);
    if (!shape_ok.ok()) return shape_ok.with_context(weights);
    // A rank-4 [C, C, 1, 1] source read as [C, C] has the same element order, so loading by element count is right.
    // Lossy conversions get their relative error measured (once: the writer calls each producer twice).
    const bool lossy = dtype != DType::F32 && !(dtype == DType::F16 && t->dtype == SourceDType::F16);
    DdpmTensorProducer produce = [&, t, dtype, rank, lossy, i](void* dst, uint64_t) -> Status {
      const std::vector<int64_t>& shape = specs[i].shape;
      const size_t n = static_cast<size_t>(t->numel());
      Status loaded;
      if (dtype == DType::F32) {
        loaded = load_tensor_f32(file, *t, static_cast<float*>(dst));
      } else if (dtype == DType::F16 && t->dtype != SourceDType::F32) {
        loaded = load_tensor_raw_f16(file, *t, static_cast<uint16_t*>(dst));
        if (loaded.ok() && lossy && !measured[i]) {
          scratch.resize(n);
          loaded = load_tensor_f32(file, *t, scratch.data());
        }
      } else {
        // f32 → f16 through the kernel table's row converter (F16C/NEON), which rounds exactly like the loader's
        // portable per-element conversion (core/half.h) at a fraction of its cost; block types row by row.
        scratch.resize(n);
        loaded = load_tensor_f32(file, *t, scratch.data());
        if (loaded.ok()) {
          loaded = quant::encode_tensor(specs[i].name, dtype, rank, shape.data(), scratch.data(), dst,
                                        quant::ConvRows::kTapMajor);
          loaded.with_context(weights);
        }
      }
      if (loaded.ok() && lossy && !measured[i]) {
        check.resize(n);
        quant::decode_tensor(dtype, rank, shape.data(), dst, check.data(), quant::ConvRows::kTapMajor);
        retype.tensors[i].relative_error = quant::relative_l2(scratch.data(), check.data(), t->numel());
        measured[i] = true;
      }
      // A weight that is not finite makes every output NaN: a diverged or damaged checkpoint, refused by name. (The
      // block types' encoder refuses it too; this covers f32 and f16.)
      if (loaded.ok() && (dtype == DType::F32 || dtype == DType::F16)) {
        int64_t bad = -1;
        if (dtype == DType::F32) {
          const float* v = static_cast<const float*>(dst);
          for (size_t k = 0; k < n && bad < 0; ++k) bad = std::isfinite(v[k]) ? -1 : static_cast<int64_t>(k);
        } else {
          const uint16_t* h = static_cast<const uint16_t*>(dst);
          for (size_t k = 0; k < n && bad < 0; ++k) bad = (h[k] & 0x7c00) == 0x7c00 ? static_cast<int64_t>(k) : -1;
        }
        if (bad >= 0 && dtype == DType::F16 && t->dtype != SourceDType::F16) {
          // The source may be finite and only too large for f16 (f32, bf16 and f64 all reach past 65504). An f32
          // source is in scratch already (this path encoded from it); the others are read again, on this error only.
          bool source_read = true;
          if (t->dtype != SourceDType::F32) {
            scratch.resize(n);
            source_read = load_tensor_f32(file, *t, scratch.data()).ok();
          }
          const float source = source_read ? scratch[static_cast<size_t>(bad)] : NAN;
          if (std::isfinite(source)) {
            loaded = errorf("%s: tensor '%s' element %lld is %g, beyond f16's range (|x| <= 65504): keep it f32 "
                            "(--tensor-type)", weights.c_str(), specs[i].name.c_str(), static_cast<long long>(bad),
                            source);
            bad = -1;
          }
        }
        if (bad >= 0) {
          loaded = errorf("%s: tensor '%s' holds NaN or infinity (element %lld): a diverged or damaged checkpoint",
                          weights.c_str(), specs[i].name.c_str(), static_cast<long long>(bad));
        }
      }
      release_pages(file, t->storage_offset, t->storage_bytes);
      return loaded;
    };
    DDPM_TRY(writer.add_tensor(spec.name, dtype, rank, spec.shape.data(), std::move(produce)));
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    report->parameters += n;
  }
  retype.warnings = policy.unmatched_warnings(weights);
  DDPM_TRY(writer.finish(o.output));
  report->tensors = specs.size();
  struct stat st;
  if (stat(o.output.c_str(), &st) == 0) report->output_bytes = static_cast<uint64_t>(st.st_size);
  retype.output_bytes = report->output_bytes;
  report->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return Status();
}

}  // namespace ddpm
