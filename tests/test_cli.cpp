// The `ddpm` binary as a user meets it: bad flags, bad files and unwritable outputs give a one-line message and a
// non-zero exit, never a crash or a half-written file. Needs DDPM_BIN (set by `make test` / tests/check.sh); the
// cross-compiled run under qemu skips it.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "io/png.h"
#include "model/convert.h"
#include "model/ddpm_file.h"
#include "test_util.h"

using namespace ddpm;

namespace {

struct Result {
  int exit_code = -1;
  std::string output;  // stdout + stderr
};

// `environment`: VAR=value assignments put before the command, for the variables read at start-up.
Result run(const std::string& args, const std::string& environment = "") {
  const char* bin = std::getenv("DDPM_BIN");
  Result r;
  const std::string command = environment + " " + std::string(bin) + " " + args + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe);
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) r.output.append(buffer, n);
  const int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// The CLI tests run the binary DDPM_BIN names (the cross-compiled run under qemu has none): false, with a warning,
// when it is not set.
bool cli_binary_given() {
  if (std::getenv("DDPM_BIN")) return true;
  WARN("DDPM_BIN not set: CLI tests skipped");
  return false;
}

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// One line of text on failure: the message, no stack trace, no assertion.
void check_one_line_error(const Result& r, int code, const std::string& needle) {
  INFO(r.output);
  CHECK(r.exit_code == code);
  CHECK(r.output.find(needle) != std::string::npos);
  CHECK(std::count(r.output.begin(), r.output.end(), '\n') == 1);
}

const std::string& model_path() {
  static std::string path;
  if (path.empty()) {
    char pattern[] = "/tmp/ddpm_cli_XXXXXX";
    REQUIRE(mkdtemp(pattern));
    // Everything the CLI tests write goes here; removed when the test binary exits.
    static const struct RemoveAtExit {
      std::string dir;
      ~RemoveAtExit() {
        std::error_code ignored;
        std::filesystem::remove_all(dir, ignored);
      }
    } remove_at_exit{pattern};
    path = std::string(pattern) + "/micro.ddpm";
    ConvertOptions o;
    o.input = "data/unet/micro";
    o.output = path;
    ConvertReport report;
    REQUIRE(convert_checkpoint(o, &report).ok());
  }
  return path;
}

}  // namespace

TEST_CASE("ddpm CLI: happy paths", "[cli]") {
  if (!cli_binary_given()) return;
  Result version = run("--version");
  CHECK(version.exit_code == 0);
  CHECK(version.output.find("kernels: ") != std::string::npos);
  // DDPM_QGEMM picks a listed quantised kernel for every level (benchmarks); the reference one is always listed.
  Result forced = run("--version", "DDPM_QGEMM=scalar DDPM_ISA=scalar");
  CHECK(forced.exit_code == 0);
  CHECK(forced.output.find("kernels: scalar, qgemm: scalar") != std::string::npos);
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  Result info = run("info " + model_path());
  INFO(info.output);
  CHECK(info.exit_code == 0);
  CHECK(info.output.find("144 tensors") != std::string::npos);
  const std::string png = dir + "/out.png";
  Result gen = run("generate -m " + model_path() + " -n 2 --steps 3 --seed 5 -t 2 -o " + png);
  INFO(gen.output);
  REQUIRE(gen.exit_code == 0);
  Image image;
  REQUIRE(read_png(png, &image).ok());
  CHECK(image.width == 8 + 2 + 8);  // two 8×8 images, 2-pixel gap
  CHECK(image.channels == 3);
  REQUIRE(!image.text.empty());
  CHECK(image.text[0].first == "parameters");
  CHECK(image.text[0].second.find("seed 5") != std::string::npos);
  CHECK(image.text[0].second.find("spacing leading") != std::string::npos);  // the model's, recorded for reruns
  Result numbered = run("generate -m " + model_path() + " -n 2 --steps 2 --seed 5 --no-grid --scale 2 -o " + dir + "/one.png");
  CHECK(numbered.exit_code == 0);
  CHECK(exists(dir + "/one_000.png"));
  CHECK(exists(dir + "/one_001.png"));
  Result schedule = run("schedule -m " + model_path() + " --sampler ddpm --steps 7 --spacing linspace");
  CHECK(schedule.exit_code == 0);
  CHECK(schedule.output.find("  832 ") != std::string::npos);
  Result bench = run("bench train --batch 2 --reps 1 -t 2");
  INFO(bench.output);
  CHECK(bench.exit_code == 0);
  CHECK(bench.output.find("fashion-mnist preset (3940801 parameters), batch 2") != std::string::npos);
  CHECK(bench.output.find("ms/step (median of 1") != std::string::npos);
  // bench unet --batch: only that batch size (the default runs 1 and 8).
  Result unet = run("bench unet --batch 1 --reps 1 -t 1 --type q4_0:on,q8_0:no-tier");
  INFO(unet.output);
  CHECK(unet.exit_code == 0);
  CHECK(unet.output.find("    1   1      q4_0:on ") != std::string::npos);  // labels right-aligned to the longest
  CHECK(unet.output.find("    1   1 q8_0:no-tier ") != std::string::npos);
  CHECK(unet.output.find("\n    8 ") == std::string::npos);
}

TEST_CASE("ddpm CLI: bad input gets a one-line error and a non-zero exit", "[cli]") {
  if (!cli_binary_given()) return;
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  check_one_line_error(run("frobnicate"), 2, "unknown command 'frobnicate'");
  check_one_line_error(run("generate -m " + model_path() + " --bogus"), 2, "unknown option '--bogus'");
  check_one_line_error(run("generate -m " + model_path() + " --steps 0"), 2, "--steps");
  check_one_line_error(run("generate -m " + model_path() + " --steps abc"), 2, "not an integer");
  check_one_line_error(run("generate -m " + model_path() + " --sampler euler"), 2, "euler");
  check_one_line_error(run("generate -m " + model_path() + " --class 3"), 2, "not class-conditional");
  check_one_line_error(run("generate -m " + model_path() + " --steps 5000 -o " + dir + "/x.png"), 2, "5000");
  check_one_line_error(run("generate -m " + dir + "/missing.ddpm"), 1, "missing.ddpm");
  check_one_line_error(run("generate"), 2, "missing -m");
  // Unwritable output: an error naming the path, and no file.
  check_one_line_error(run("generate -m " + model_path() + " --steps 1 -o /nonexistent-dir/x.png"), 1,
                       "/nonexistent-dir/x.png");
  // A truncated model and a file that is not a model.
  std::ifstream in(model_path(), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::ofstream(dir + "/truncated.ddpm", std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  check_one_line_error(run("generate -m " + dir + "/truncated.ddpm"), 1, "truncated.ddpm");
  std::ofstream(dir + "/page.ddpm") << "<!DOCTYPE html><html>not a model</html>";
  check_one_line_error(run("info " + dir + "/page.ddpm"), 1, "page.ddpm");
  check_one_line_error(run("convert " + dir + "/page.ddpm -o " + dir + "/never.ddpm"), 1, "page.ddpm");
  CHECK(!exists(dir + "/never.ddpm"));
  check_one_line_error(run("convert data/unet/micro"), 2, "missing -o");
  check_one_line_error(run("bench frobnicate"), 2, "expected a benchmark name");
  check_one_line_error(run("bench train --preset toy-mlp --reps 1"), 2, "not a U-Net");
  check_one_line_error(run("bench train --preset nosuch --reps 1"), 2, "--preset: unknown preset 'nosuch'");
  check_one_line_error(run("--version", "DDPM_QGEMM=nosuch"), 2, "DDPM_QGEMM: no quantised kernel 'nosuch'");
  check_one_line_error(run("--version", "DDPM_ISA=nosuch"), 2, "DDPM_ISA");
  check_one_line_error(run("generate -m " + model_path() + " --steps 1001"), 2,
                       "--steps 1001: the model's schedule has 1000 timesteps, so at most 1000 steps");
  check_one_line_error(run("generate -m " + model_path() + " --seed 18446744073709551616"), 2,
                       "--seed: 18446744073709551616 is outside 0..");
  check_one_line_error(run("generate -m " + model_path() + " --uncond-class 0"), 2, "is not class-conditional");
  check_one_line_error(run("bench ops --filter no-such-op"), 2, "--filter 'no-such-op' matches no op");
  check_one_line_error(run("bench ops --type q8_0"), 2, "--type applies to bench unet only, not bench ops");
  check_one_line_error(run("info " + model_path() + " --config data/unet/micro/config.json"), 2,
                       "--config applies to checkpoints, not to a .ddpm model");
  check_one_line_error(run("--version now"), 2, "--version takes no arguments");
  check_one_line_error(run("bench unet --type f32:on"), 2, "only block types have");
  check_one_line_error(run("bench unet --type q4_0:no-tier"), 2, "only q8_0 has an f16 tier");
  check_one_line_error(run("generate -m " + model_path() + " --cfg 3"), 2, "--cfg: this model is not class-conditional");
  check_one_line_error(run("generate -m " + model_path() + " --eta 1.5"), 2, "--eta: 1.5 is outside 0..1");
  check_one_line_error(run("generate -m " + model_path() + " --sampler ddpm --eta 0.5"), 2,
                       "--eta applies to the DDIM sampler only");
  check_one_line_error(run("generate -m " + model_path() + " --class 3,"), 2, "--class: '3,' has an empty entry");
  // Networks that are not U-Nets: info says what they are (exit 0), generate says why it cannot run them.
  Result toy = run("train --preset toy-mlp --steps 3 -t 1 -o " + dir + "/toy.ddpm --checkpoint-every 3");
  INFO(toy.output);
  REQUIRE(toy.exit_code == 0);
  Result toy_info = run("info " + dir + "/toy.ddpm");
  CHECK(toy_info.exit_code == 0);
  CHECK(toy_info.output.find("network: 'mlp1d', not a U-Net") != std::string::npos);
  check_one_line_error(run("generate -m " + dir + "/toy.ddpm"), 1, "holds a 'mlp1d' network");
  Result ckpt_info = run("info " + dir + "/toy.ckpt");
  CHECK(ckpt_info.exit_code == 0);
  CHECK(ckpt_info.output.find("a training checkpoint") != std::string::npos);
  check_one_line_error(run("generate -m " + dir + "/toy.ckpt"), 1, "is a training checkpoint, not a model");
  Result help = run("generate --help");
  CHECK(help.exit_code == 0);
  CHECK(help.output.find("--steps") != std::string::npos);
}

// Bytes of a file, for checking that a refused command left it alone.
std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST_CASE("ddpm CLI: no output overwrites an input or another output", "[cli]") {
  if (!cli_binary_given()) return;
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  const std::string model = model_path(), before = file_bytes(model);
  REQUIRE(symlink(model.c_str(), (dir + "/alias.ddpm").c_str()) == 0);
  check_one_line_error(run("generate -m " + model + " --steps 1 -o " + model), 1,
                       model + ": is also the model; choose another output path");
  check_one_line_error(run("generate -m " + model + " --steps 1 -o " + dir + "/alias.ddpm"), 1,
                       dir + "/alias.ddpm: is the same file as the model " + model);
  check_one_line_error(run("generate -m " + model + " --steps 1 -o " + dir + "/g.png --save-raw " + dir + "/./g.png"), 1,
                       dir + "/g.png: is the same file as the --save-raw file " + dir + "/./g.png");
  check_one_line_error(run("generate -m " + model + " --steps 1 -n 3 --no-grid -o " + dir + "/n.png --save-raw " + dir +
                           "/n_002.png"),
                       1, "n_002.png: is also the --save-raw file");
  check_one_line_error(run("quantize " + model + " " + model + " --type q8_0"), 1, ": is also the input model");
  // (A copy of the fixture's config: were the check to fail, the fixture itself would survive.)
  std::ofstream(dir + "/config.json") << file_bytes("data/unet/micro/config.json");
  check_one_line_error(run("convert data/unet/micro/diffusion_pytorch_model.safetensors --config " + dir +
                           "/config.json -o " + dir + "/config.json"),
                       1, "is also the config");
  const std::string x = dir + "/x.f32";
  std::ofstream(x, std::ios::binary) << std::string(4 * 3 * 8 * 8, '\0');
  check_one_line_error(run("forward -m " + model + " --input " + x + " --shape 1,3,8,8 --timesteps 5 -o " + x), 1,
                       x + ": is also the input");
  CHECK(file_bytes(model) == before);
  CHECK(!exists(dir + "/g.png"));
  CHECK(!exists(dir + "/n_000.png"));
  // A directory as the output or as a config: one line, no crash (libstdc++ throws reading a directory).
  check_one_line_error(run("generate -m " + model + " --steps 1 -o " + dir), 1, dir + ": it is a directory");
  check_one_line_error(run("convert data/unet/micro/diffusion_pytorch_model.safetensors --config " + dir + " -o " + dir +
                           "/c.ddpm"),
                       1, "cannot read " + dir + ": it is a directory");
  check_one_line_error(run("info data/unet/micro/diffusion_pytorch_model.safetensors --config " + dir), 1,
                       "it is a directory");
  // Written to /dev/null in place: the device stays a device.
  Result devnull = run("generate -m " + model + " --steps 1 -o /dev/null");
  CHECK(devnull.exit_code == 0);
  struct stat st;
  REQUIRE(stat("/dev/null", &st) == 0);
  CHECK(S_ISCHR(st.st_mode));
  // A file no tool could load is not written: a null class of an unconditional model.
  check_one_line_error(run("convert data/unet/micro -o " + dir + "/nc.ddpm --null-class 5"), 1,
                       "--null-class 5: the model has 0 class embeddings");
  CHECK(!exists(dir + "/nc.ddpm"));
  // forward's flags are checked as flags.
  check_one_line_error(run("forward -m " + model + " --input " + x + " --shape 1,3,-8,8 --timesteps 5 -o " + dir +
                           "/y.f32"),
                       2, "--shape: -8 is not a size");
  check_one_line_error(run("forward -m " + model + " --input " + x + " --shape 1,3,8,8 --timesteps 5 --class-labels 1 -o " +
                           dir + "/y.f32"),
                       2, "--class-labels: " + model + " is not class-conditional");
}

TEST_CASE("ddpm info describes checkpoints without converting them", "[cli]") {
  if (!cli_binary_given()) return;
  auto has = [](const Result& r, const std::string& needle) {
    INFO(r.output);
    CHECK(r.exit_code == 0);
    CHECK(r.output.find(needle) != std::string::npos);
  };
  // A diffusers folder: safetensors weights, its config.json, and the match against the U-Net it describes.
  const Result folder = run("info data/unet/micro");
  has(folder, "safetensors checkpoint");
  has(folder, "144 tensors, 45259 parameters");
  has(folder, "config: data/unet/micro/config.json");
  has(folder, "block_out_channels       [8,16]");
  has(folder, "down_blocks.1                              22 tensors");
  has(folder, "match: every tensor the U-Net needs is present");
  // torch zip with pre-refactor attention names, every tensor listed under its current name.
  const Result legacy = run("info data/unet/micro_legacy/diffusion_pytorch_model.bin --tensors");
  has(legacy, "torch zip checkpoint");
  has(legacy, "32 names normalised to diffusers keys");
  has(legacy, "down_blocks.1.attentions.0.to_q.weight");
  has(legacy, "F32  [16, 16]");
  has(legacy, "match: every tensor");
  // A Lightning checkpoint: the container around the state dict, the prefix stripped; no config beside it.
  const Result lightning = run("info data/pickle/lightning.ckpt");
  has(lightning, "state_dict, loops");
  has(lightning, "state dicts:   state_dict");
  has(lightning, "model.conv.weight -> conv.weight");
  has(lightning, "F16: 1 tensors");
  has(lightning, "needs --config");
  // A config that does not fit is reported, not an error: info describes, convert refuses.
  const Result mismatch = run("info data/pickle/micro.bin --config data/unet/tiny/config.json");
  has(mismatch, "match: NO");
  has(mismatch, "wrong shape");
  // Files that are neither models nor checkpoints: one line and exit 1.
  const Result png = run("info data/image/rgb8.png");
  CHECK(png.exit_code == 1);
  CHECK(png.output.find("not a safetensors or PyTorch checkpoint") != std::string::npos);
  CHECK(std::count(png.output.begin(), png.output.end(), '\n') == 1);
  const Result missing = run("info data/no-such-file.bin");
  CHECK(missing.exit_code == 1);
  CHECK(missing.output == "ddpm info: data/no-such-file.bin: no such file or folder\n");
}

TEST_CASE("ddpm quantize and convert --type with block types", "[cli][quant]") {
  if (!cli_binary_given()) return;
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  // Happy path: the per-tensor table, the totals, a warning for a pattern that matches nothing; info shows the type.
  const std::string q8 = dir + "/micro_q8.ddpm";
  Result quantize = run("quantize " + model_path() + " " + q8 + " --type q8_0 --keep 'attentions' --keep nothing-here");
  INFO(quantize.output);
  REQUIRE(quantize.exit_code == 0);
  CHECK(quantize.output.find("down_blocks.0.resnets.0.conv1.weight") != std::string::npos);
  CHECK(quantize.output.find("f32 -> q8_0") != std::string::npos);
  CHECK(quantize.output.find("--keep 'attentions'") != std::string::npos);
  CHECK(quantize.output.find("warning: --keep 'nothing-here' matches no tensor in " + model_path()) != std::string::npos);
  CHECK(quantize.output.find("file size: ") != std::string::npos);
  Result info = run("info " + q8);
  CHECK(info.exit_code == 0);
  CHECK(info.output.find("q8_0     47 tensors") == std::string::npos);  // attentions kept: fewer than 47
  CHECK(info.output.find("q8_0 ") != std::string::npos);
  CHECK(info.output.find("bits/weight") != std::string::npos);
  CHECK(info.output.find("provenance.dtype_recipe          \"q8_0 (conv and linear weights") != std::string::npos);
  // The calibration: each configuration measured against the input, the choice written and shown by info.
  CHECK(quantize.output.find("calibration: U-Net output error against " + model_path() + " on 6 inputs (budget 1%)") !=
        std::string::npos);
  CHECK(quantize.output.find("direct 3x3 convs, no f16 tier") != std::string::npos);  // micro: too narrow for Winograd
  CHECK(quantize.output.find("int8 Winograd") == std::string::npos);
  CHECK(quantize.output.find("<- written") != std::string::npos);
  CHECK(info.output.find("quant.calibration                \"q8_0, 6 inputs, budget 1%: ") != std::string::npos);
  CHECK(info.output.find("quant.int8_winograd") != std::string::npos);
  CHECK(info.output.find("as ddpm quantize's calibration chose") != std::string::npos);
  const Result plain = run("quantize " + model_path() + " " + dir + "/micro_q8_plain.ddpm --type q8_0 -q --no-calibrate");
  CHECK(plain.exit_code == 0);
  CHECK(plain.output.find("calibration") == std::string::npos);
  const Result plain_info = run("info " + dir + "/micro_q8_plain.ddpm");
  CHECK(plain_info.output.find("quant.") == std::string::npos);
  CHECK(plain_info.output.find("3x3 convs by 8-bit Winograd: off by default (") != std::string::npos);
  const Result loose = run("quantize " + model_path() + " " + dir + "/micro_q8_loose.ddpm --type q8_0 -q --max-error 50 -t 1");
  CHECK(loose.exit_code == 0);
  CHECK(loose.output.find("direct 3x3 convs, no f16 tier") < loose.output.find("<- written"));
  CHECK(loose.output.find("<- written") < loose.output.find("direct 3x3 convs, f16 tier"));
  // The choice is what the file holds: no f16 tensors under the recipe, the Winograd choice recorded.
  const Result loose_info = run("info " + dir + "/micro_q8_loose.ddpm --tensors");
  CHECK(loose_info.output.find("f16: the last up block") == std::string::npos);
  CHECK(loose_info.output.find("up_blocks.1.resnets.1.conv2.weight                           q8_0") != std::string::npos);
  CHECK(loose_info.output.find("quant.int8_winograd              false") != std::string::npos);
  CHECK(info.output.find("f16: the last up block") != std::string::npos);  // 1 % is out of micro's reach: the tier stays
  // convert straight to a block type.
  Result convert = run("convert data/unet/micro -o " + dir + "/micro_q4.ddpm --type q4_0 -q --no-calibrate");
  INFO(convert.output);
  CHECK(convert.exit_code == 0);
  CHECK(convert.output.find("q4_0 ") != std::string::npos);
  CHECK(exists(dir + "/micro_q4.ddpm"));
  // convert calibrates as quantize does, through a scratch f32 file that it removes, and names the checkpoint.
  const std::string checkpoint = "data/unet/tiny/diffusion_pytorch_model.fp16.safetensors";
  Result tiny_q8 = run("convert data/unet/tiny -o " + dir + "/tiny_q8.ddpm --type q8_0 -t 2");
  INFO(tiny_q8.output);
  CHECK(tiny_q8.exit_code == 0);
  CHECK(tiny_q8.output.find("calibration: U-Net output error against " + checkpoint + " on 6 inputs (budget 1%)") !=
        std::string::npos);
  CHECK(tiny_q8.output.find("<- written") != std::string::npos);
  CHECK(tiny_q8.output.find("f16 -> q8_0") != std::string::npos);  // the checkpoint's types, not the scratch file's
  CHECK(tiny_q8.output.find("scratch") == std::string::npos);
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    CHECK(entry.path().filename().string().find(".scratch.") == std::string::npos);
  }
  const Result tiny_q8_info = run("info " + dir + "/tiny_q8.ddpm");
  CHECK(tiny_q8_info.output.find("quant.calibration                \"q8_0, 6 inputs, budget 1%: ") != std::string::npos);
  // The same choice and tensors as convert to f32, then quantize (info prints neither the paths nor the dates).
  CHECK(run("convert data/unet/tiny -o " + dir + "/tiny_f32.ddpm -q").exit_code == 0);
  CHECK(run("quantize " + dir + "/tiny_f32.ddpm " + dir + "/tiny_q8_two_steps.ddpm --type q8_0 -q -t 1").exit_code == 0);
  const auto without_dates = [](std::string text) {
    const size_t created = text.find("provenance.created");
    if (created != std::string::npos) text.erase(created, text.find('\n', created) - created);
    return text.substr(text.find('\n'));  // the first line names the file
  };
  CHECK(without_dates(run("info " + dir + "/tiny_q8_two_steps.ddpm --tensors").output) ==
        without_dates(run("info " + dir + "/tiny_q8.ddpm --tensors").output));
  const Result not_calibrated = run("convert data/unet/tiny -o " + dir + "/tiny_q8_plain.ddpm --type q8_0 -q --no-calibrate");
  CHECK(not_calibrated.exit_code == 0);
  CHECK(not_calibrated.output.find("calibration") == std::string::npos);
  CHECK(run("info " + dir + "/tiny_q8_plain.ddpm").output.find("quant.") == std::string::npos);
  check_one_line_error(run("convert data/unet/tiny -o " + dir + "/x.ddpm --max-error 2"), 2,
                       "--max-error: only block types");
  check_one_line_error(run("convert data/unet/tiny -o " + checkpoint + " --type q4_0"), 1, "is also the checkpoint");
  // tiny's 3×3 convs have 32·n input channels: stored tap-major, and info says so.
  const Result tiny = run("info " + dir + "/tiny_q8.ddpm --tensors");
  CHECK(tiny.output.find("block-typed conv weights with rows tap-major") != std::string::npos);
  CHECK(tiny.output.find("down_blocks.0.resnets.0.conv1.weight") != std::string::npos);
  CHECK(tiny.output.find("x 3 x 3 (tap-major)") != std::string::npos);
  CHECK(tiny.output.find("3x3 convs by 8-bit Winograd: off by default") != std::string::npos);  // a q8_0 model
  // Without a calibration the loader goes by the types: on for q4_0.
  CHECK(run("info " + dir + "/micro_q4.ddpm").output.find("3x3 convs by 8-bit Winograd: on by default") !=
        std::string::npos);
  CHECK(run("quantize --help").output.find("--tensor-type REGEX=TYPE") != std::string::npos);
  CHECK(run("--help").output.find("quantize") != std::string::npos);

  // Bad input: one line naming the problem, exit 2 for usage and 1 at run time, no output file.
  const std::string out = dir + "/never_q.ddpm";
  check_one_line_error(run("quantize " + model_path() + " " + out + " --type q3_k"), 2,
                       "--type: unknown type 'q3_k' (valid: f32, f16, q8_0, q5_0, q4_1, q4_0)");
  check_one_line_error(run("convert data/unet/micro -o " + out + " --type q9"), 2, "valid: f32, f16, q8_0");
  check_one_line_error(run("quantize " + model_path() + " " + out), 2, "missing --type");
  check_one_line_error(run("quantize " + model_path() + " " + out + " --type q8_0 --max-error -1"), 2, "--max-error");
  check_one_line_error(run("quantize " + model_path() + " " + out + " --type q8_0 --max-error 1%"), 2, "--max-error");
  check_one_line_error(run("quantize " + model_path() + " " + out + " --type q8_0 --max-error 2 --no-calibrate"), 2,
                       "--max-error: the calibration it bounds is skipped by --no-calibrate");
  check_one_line_error(run("quantize " + model_path() + " " + out + " --type f16 --max-error 2"), 2,
                       "--max-error: only block types (q8_0, q5_0, q4_1, q4_0) are calibrated");
  check_one_line_error(run("quantize data/unet/micro/diffusion_pytorch_model.safetensors " + out + " --type q8_0"), 1,
                       "data/unet/micro/diffusion_pytorch_model.safetensors: not a ddpm.cpp model file");
  check_one_line_error(run("quantize " + model_path() + " " + out + " --type q8_0 --keep 'down[0'"), 2,
                       "--keep 'down[0': not a valid regular expression");
  check_one_line_error(run("quantize " + model_path() + " " + out + " --type q8_0 --tensor-type 'conv=q2'"), 2,
                       "--tensor-type 'conv=q2': unknown type 'q2'");
  check_one_line_error(run("quantize " + model_path() + " " + out + " --type q8_0 --tensor-type conv"), 2,
                       "expected REGEX=TYPE");
  check_one_line_error(run("quantize " + model_path() + " /nonexistent-dir/q.ddpm --type q8_0"), 1,
                       "/nonexistent-dir/q.ddpm");
  check_one_line_error(run("quantize " + dir + "/missing.ddpm " + out + " --type q8_0"), 1, "missing.ddpm");
  CHECK(!exists(out));
}

TEST_CASE("ddpm generate checks every output before sampling and writes all of them or none", "[cli]") {
  if (!cli_binary_given()) return;
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  const std::string generate = "generate -m " + model_path() + " --seed 1 -t 1 ";
  // A grid larger than a PNG may be: a usage error before sampling (1000 steps of 4000 images would take minutes).
  check_one_line_error(run(generate + "-n 4000 --scale 64 --steps 1000 -o " + dir + "/huge.png"), 2,
                       "the grid would be 32894x32380 pixels");
  CHECK(!exists(dir + "/huge.png"));
  // A directory where the second numbered image goes: found before sampling, and nothing is written.
  REQUIRE(::mkdir((dir + "/blocked_001.png").c_str(), 0755) == 0);
  check_one_line_error(run(generate + "-n 3 --steps 2 --no-grid -o " + dir + "/blocked.png --save-raw " + dir +
                           "/blocked.f32"),
                       1, "blocked_001.png: it is a directory");
  CHECK(!exists(dir + "/blocked_000.png"));
  CHECK(!exists(dir + "/blocked.f32"));
  // An image that cannot be written (a full device fails only when flushed) leaves no raw samples behind.
  if (exists("/dev/full")) {
    const Result full = run(generate + "-n 2 --steps 2 -o /dev/full --save-raw " + dir + "/full.f32");
    INFO(full.output);
    CHECK(full.exit_code == 1);
    CHECK(full.output.find("/dev/full") != std::string::npos);
    CHECK(!exists(dir + "/full.f32"));
  }
  // Both written when all goes well.
  const Result fine = run(generate + "-n 2 --steps 2 --no-grid -o " + dir + "/fine.png --save-raw " + dir + "/fine.f32");
  CHECK(fine.exit_code == 0);
  CHECK((exists(dir + "/fine_000.png") && exists(dir + "/fine_001.png") && exists(dir + "/fine.f32")));
  check_one_line_error(run(generate + "--steps 2 -o " + dir + "/x.png", "DDPM_STREAM_OUTPUTS=yes"), 2,
                       "DDPM_STREAM_OUTPUTS: 'yes' is not 0 or 1");
  check_one_line_error(run(generate + "--steps 2 -o -"), 1, "-: writing to standard output this way is not supported");
  CHECK(!exists("-"));
  // `ddpm help CMD` is `ddpm CMD --help`; no command at all is a usage error, as an unknown one is.
  const Result help = run("help generate");
  CHECK(help.exit_code == 0);
  CHECK(help.output.find("usage: ddpm generate") != std::string::npos);
  CHECK(run("").exit_code == 2);
}

TEST_CASE("ddpm generate replaces no earlier file when a later one fails", "[cli]") {
  if (!cli_binary_given()) return;
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  for (const char* k : {"000", "001", "002"}) std::ofstream(dir + "/kept_" + k + ".png") << "OLD";
  std::ofstream(dir + "/kept.f32") << "OLD";
  // A file size limit of 1 KiB (2 blocks in dash, 2 KiB in bash): the 8x8 PNGs fit, the 2304-byte raw samples do
  // not. Every file is staged before any is renamed, so the earlier files stay as they were.
  const Result limited = run("generate -m " + model_path() + " -n 3 --steps 2 --seed 1 -t 1 --no-grid -o " + dir +
                                 "/kept.png --save-raw " + dir + "/kept.f32",
                             "trap '' XFSZ; ulimit -f 2;");
  INFO(limited.output);
  CHECK(limited.exit_code == 1);
  for (const char* k : {"000", "001", "002"}) CHECK(file_bytes(dir + "/kept_" + k + ".png") == "OLD");
  CHECK(file_bytes(dir + "/kept.f32") == "OLD");
  std::error_code ignored;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ignored)) {
    CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);  // no temporary file left
  }
}

TEST_CASE("ddpm train refuses a sample grid too large for a PNG before training", "[cli][train]") {
  if (!cli_binary_given()) return;
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  // 250 classes of 8x8 images: one grid column per class, each cell scaled to 64 pixels, is 16498 pixels wide.
  const std::string data = dir + "/classes250";
  const std::vector<uint8_t> pixels(8 * 8 * 3, 128);
  for (int k = 0; k < 250; ++k) {
    char name[16];
    std::snprintf(name, sizeof name, "c%03d", k);
    std::filesystem::create_directories(data + "/" + name);
    REQUIRE(write_png(data + "/" + name + "/a.png", 8, 8, 3, pixels.data(), {}).ok());
  }
  std::string config = file_bytes("data/unet/micro/config.json");
  const size_t at = config.find("\"num_class_embeds\": null");
  REQUIRE(at != std::string::npos);
  config.replace(at, std::strlen("\"num_class_embeds\": null"), "\"num_class_embeds\": 251");
  std::ofstream(dir + "/classes250.json") << config;
  const Result r = run("train --config " + dir + "/classes250.json --data " + data +
                       " --steps 5 --sample-every 2 -t 1 -o " + dir + "/classes250.ddpm");
  INFO(r.output);
  CHECK(r.exit_code == 2);
  CHECK(r.output.find("--sample-every: a grid of 1000 samples would be 16498x") != std::string::npos);
  CHECK(r.output.find("step ") == std::string::npos);  // before the first step
  CHECK(!exists(dir + "/classes250.ddpm"));
}

TEST_CASE("ddpm schedule lists the steps generate runs", "[cli]") {
  if (!cli_binary_given()) return;
  auto lines = [](const Result& r) { return std::count(r.output.begin(), r.output.end(), '\n'); };
  // The shipped model names DDIM-50 as its default: those 50 steps (and a header line) for DDIM; asked for DDPM, every
  // training timestep, as diffusers' DDPMPipeline runs (before, DDPM got the model's DDIM count: 50 steps).
  const std::string model = "../models/fashion-mnist.ddpm";
  CHECK(lines(run("schedule -m " + model)) == 51);
  CHECK(lines(run("schedule -m " + model + " --sampler ddim")) == 51);
  CHECK(lines(run("schedule -m " + model + " --sampler ddpm")) == 1001);
  CHECK(lines(run("schedule -m " + model + " --sampler ddpm --steps 20")) == 21);
  // The micro model names no default: DDIM 50.
  CHECK(lines(run("schedule -m " + model_path())) == 51);
  // forward on a class-conditional model without labels names the option that gives them.
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  std::ofstream(dir + "/zeros.f32", std::ios::binary).write(std::string(28 * 28 * 4, '\0').data(), 28 * 28 * 4);
  check_one_line_error(run("forward -m " + model + " --input " + dir + "/zeros.f32 --shape 1,1,28,28 --timesteps 5 -o " +
                           dir + "/y.f32"),
                       2, "is class-conditional: give --class-labels");
}

TEST_CASE("ddpm quantize and convert refuse what they cannot do, and say what they did not", "[cli][quant]") {
  if (!cli_binary_given()) return;
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  // A training checkpoint (the container with the trainer's architecture key) is no model to re-type or convert.
  const std::string checkpoint = dir + "/fake.ckpt";
  {
    DdpmWriter writer;
    REQUIRE(writer.set_metadata("ddpm.architecture", MetadataValue::string("ddpm-train-checkpoint")).ok());
    const std::vector<float> weight(32 * 32, 0.5f);
    const int64_t shape[2] = {32, 32};
    REQUIRE(writer.add_tensor("model.weight", DType::F32, 2, shape, weight.data()).ok());
    REQUIRE(writer.finish(checkpoint).ok());
  }
  check_one_line_error(run("quantize " + checkpoint + " " + dir + "/q.ddpm --type q8_0"), 1,
                       "fake.ckpt: is a training checkpoint, not a model; `ddpm train --resume");
  check_one_line_error(run("quantize " + checkpoint + " " + dir + "/q.ddpm --type f16"), 1, "is a training checkpoint");
  CHECK(!exists(dir + "/q.ddpm"));
  check_one_line_error(run("convert " + checkpoint + " -o " + dir + "/c.ddpm --config data/unet/micro/config.json"), 1,
                       "a training checkpoint is exported by `ddpm train --resume F --export-only`");
  CHECK(run("info " + checkpoint).output.find("ddpm.cpp training checkpoint, ") != std::string::npos);
  // Errors that have nothing to do with the calibration do not suggest skipping it.
  const Result unwritable = run("quantize " + model_path() + " /nonexistent-dir/q.ddpm --type q8_0");
  CHECK(unwritable.output.find("--no-calibrate") == std::string::npos);
  // Up-typing a smaller block type cannot restore it: the weights keep their type, and a warning says so even under -q.
  const std::string q4 = dir + "/for_q8.ddpm", q8 = dir + "/from_q4.ddpm";
  REQUIRE(run("quantize " + model_path() + " " + q4 + " --type q4_0 --no-calibrate -q").exit_code == 0);
  const Result up = run("quantize " + q4 + " " + q8 + " --type q8_0 --no-calibrate -q");
  INFO(up.output);
  CHECK(up.exit_code == 0);
  CHECK(up.output.find("already q4_0, q5_0, smaller than q8_0, and keep their type") != std::string::npos);
  // Options that would do nothing are refused rather than ignored.
  check_one_line_error(run("convert data/unet/micro -o " + dir + "/k.ddpm --key state_dict"), 1,
                       "--key walks the dictionaries of a PyTorch checkpoint");
  check_one_line_error(run("convert data/unet/micro -o " + dir + "/k.ddpm --strip-prefix module."), 1,
                       "--strip-prefix 'module.' begins no tensor's name (the first is 'conv_in.bias')");
  CHECK(!exists(dir + "/k.ddpm"));
  // A size the U-Net cannot run is refused before anything is written (it was written, and no tool could load it).
  check_one_line_error(run("convert data/unet/micro -o " + dir + "/k.ddpm --image-size 7"), 1,
                       "image size 7x7 does not fit the U-Net (positive multiples of 2 up to 4096)");
  CHECK(!exists(dir + "/k.ddpm"));
  const Result resized = run("convert data/unet/micro/ -o " + dir + "/k.ddpm --image-size 16");
  CHECK(resized.exit_code == 0);
  CHECK(resized.output.find("--image-size 16 replaces the config's sample_size 8") != std::string::npos);
  CHECK(resized.output.find("micro//") == std::string::npos);
}

namespace {

// Starts `ddpm ARGS` with stdout and stderr in `log`, and returns its pid once `ready` shows there (or -1 after
// about 20 s): a signal sent then reaches the running command, not the shell before it.
pid_t start_when(const std::string& args, const std::string& log, const std::string& ready) {
  const pid_t pid = test::spawn_ddpm(args, log);
  REQUIRE(pid >= 0);
  for (int i = 0; i < 4000; ++i) {
    if (file_bytes(log).find(ready) != std::string::npos) return pid;
    usleep(5000);
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

}  // namespace

TEST_CASE("ddpm train: a signal saves a checkpoint, even with --checkpoint-every 0, and exits 128 + the signal",
          "[cli]") {
  if (!cli_binary_given()) return;
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  CHECK(run("train --help").output.find("0 = only when interrupted") != std::string::npos);
  // The checkpoint path is checked before training whatever --checkpoint-every says: a signal may ask for it.
  const Result unwritable = run("train --preset toy-mlp --steps 2 -t 1 --checkpoint-every 0 --checkpoint "
                                "/nonexistent-dir/t.ckpt -o " + dir + "/t.ddpm");
  INFO(unwritable.output);
  CHECK(unwritable.exit_code == 1);
  CHECK(unwritable.output.find("ddpm train: cannot write /nonexistent-dir/t.ckpt") != std::string::npos);
  CHECK(unwritable.output.find("step ") == std::string::npos);  // refused before the first step
  CHECK(!exists(dir + "/t.ddpm"));
  for (const int sig : {SIGTERM, SIGINT}) {
    const std::string name = dir + "/signal" + std::to_string(sig);
    const pid_t pid = start_when("train --preset toy-mlp --steps 100000000 --log-every 1 -t 1 --checkpoint-every 0 -o " +
                                     name + ".ddpm",
                                 name + ".log", "step 1/");
    REQUIRE(pid > 0);
    REQUIRE(kill(pid, sig) == 0);
    int status = 0;
    REQUIRE(waitpid(pid, &status, 0) == pid);
    const std::string log = file_bytes(name + ".log");
    INFO(log);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 128 + sig);
    CHECK(log.find("; saved " + name + ".ckpt (continue with --resume " + name + ".ckpt)") != std::string::npos);
    CHECK(exists(name + ".ckpt"));
    CHECK(!exists(name + ".ddpm"));  // an interrupted run exports nothing
  }
}

TEST_CASE("ddpm train --export-only refuses the training options it would ignore", "[cli]") {
  if (!cli_binary_given()) return;
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  const Result trained = run("train --preset toy-mlp --steps 3 -t 1 --checkpoint-every 3 -o " + dir + "/run3.ddpm");
  INFO(trained.output);
  REQUIRE(trained.exit_code == 0);
  const std::string export_args = "train --resume " + dir + "/run3.ckpt --export-only -o " + dir + "/run3e.ddpm";
  check_one_line_error(run(export_args + " --lr 5 --batch 3 --sample-every 1"), 2,
                       "ddpm train: --batch, --lr, --sample-every: not used by --export-only");
  check_one_line_error(run(export_args + " --steps 10"), 2, "--steps: not used by --export-only");
  check_one_line_error(run(export_args + " --checkpoint-every 0"), 2, "--checkpoint-every: not used by --export-only");
  CHECK(!exists(dir + "/run3e.ddpm"));
  const Result exported = run(export_args + " -t 1 --guidance 3");  // what an export does use
  INFO(exported.output);
  CHECK(exported.exit_code == 0);
  CHECK(exists(dir + "/run3e.ddpm"));
}

TEST_CASE("ddpm train: the final line's loss is the model's training.final_loss", "[cli]") {
  if (!cli_binary_given()) return;
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  // More steps than the mean's window, where the progress lines' smoothed loss differs from that mean.
  const Result trained = run("train --preset toy-mlp --steps 150 -t 1 -o " + dir + "/final.ddpm");
  INFO(trained.output);
  REQUIRE(trained.exit_code == 0);
  const size_t at = trained.output.find("; loss ");
  REQUIRE(at != std::string::npos);
  CHECK(trained.output.find(", the mean of the last 100 steps", at) != std::string::npos);
  const double printed = std::atof(trained.output.c_str() + at + 7);
  const Result info = run("info " + dir + "/final.ddpm");
  const size_t key = info.output.find("training.final_loss");
  REQUIRE(key != std::string::npos);
  const double stored = std::atof(info.output.c_str() + info.output.find_first_not_of(' ', key + 19));
  CHECK(std::abs(printed - stored) <= 0.00005 + 1e-6 * stored);
}

TEST_CASE("ddpm train --help offers the presets users can run", "[cli]") {
  if (!cli_binary_given()) return;
  // toy-mlp is the tests' fixture (still accepted, see "bad input" above): its model is no image model.
  const Result help = run("train --help");
  CHECK(help.output.find("network preset: fashion-mnist") != std::string::npos);
  CHECK(help.output.find("toy-mlp") == std::string::npos);
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  check_one_line_error(run("train --preset nope -o " + dir + "/never.ddpm"), 2,
                       "unknown preset 'nope' (known: fashion-mnist)");
}

TEST_CASE("ddpm eval says which labels and which image conversion the loss is of", "[cli]") {
  if (!cli_binary_given()) return;
  const std::string dir = model_path().substr(0, model_path().rfind('/'));
  // micro is unconditional, 3-channel 8x8; the IDX fixture is 1-channel 4x4 with labels.
  const Result unconditional = run("eval -m " + model_path() +
                                   " --data data/train/images.idx --labels data/train/labels5.idx -n 2 -b 2 -t 1");
  INFO(unconditional.output);
  CHECK(unconditional.exit_code == 0);
  CHECK(unconditional.output.find("note: --labels ignored: " + model_path() + " is unconditional\n") != std::string::npos);
  CHECK(unconditional.output.find("note: data/train/images.idx: images converted from 1 to 3 channels and resized from "
                                  "4x4 to 8x8 to fit " + model_path() + " (--resize auto)\n") != std::string::npos);
  // A class-conditional model (2 classes + the null class 2), 1-channel 8x8.
  std::ofstream(dir + "/cond.json") << R"({"sample_size": 8, "in_channels": 1, "out_channels": 1,
    "block_out_channels": [8, 16], "layers_per_block": 1, "down_block_types": ["DownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "UpBlock2D"], "norm_num_groups": 4, "num_class_embeds": 3})";
  const Result trained = run("train --config " + dir + "/cond.json --data data/train/png --steps 1 --batch 2 --val 0 -t 1 "
                             "-o " + dir + "/cond.ddpm");
  INFO(trained.output);
  REQUIRE(trained.exit_code == 0);
  const Result unlabelled = run("eval -m " + dir + "/cond.ddpm --data data/train/images.idx -n 2 -b 2 -t 1");
  INFO(unlabelled.output);
  CHECK(unlabelled.exit_code == 0);
  CHECK(unlabelled.output.find("note: data/train/images.idx has no labels: every image is scored under the null class 2") !=
        std::string::npos);
  CHECK(unlabelled.output.find("resized from 4x4 to 8x8") != std::string::npos);
  CHECK(unlabelled.output.find("converted") == std::string::npos);  // 1 channel, as the model
  // Class folders of mixed PNGs: gray, RGB and gray+alpha; 8x8 and 16x8.
  const Result folders = run("eval -m " + dir + "/cond.ddpm --data data/train/png -n 3 -b 3 -t 1");
  INFO(folders.output);
  CHECK(folders.exit_code == 0);
  CHECK(folders.output.find("note: data/train/png: 2 of 3 images converted to 1 channel, 1 of 3 images resized from 16x8 "
                            "to 8x8 to fit ") != std::string::npos);
  CHECK(folders.output.find("null class") == std::string::npos);
  CHECK(folders.output.find("ignored") == std::string::npos);
}
