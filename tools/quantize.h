// What `ddpm quantize` and `ddpm convert --type` share: the calibration's options and the calibrate-then-retype
// step, so that converting straight to a block type writes what converting to f32 and quantizing would.
#pragma once

#include <string>
#include <vector>

#include "ddpm/dtype.h"
#include "quant/policy.h"
#include "quant/retype.h"
#include "tools/options.h"

namespace ddpm::tools {

struct CalibrationSettings {
  bool calibrate = true;
  double max_error_percent = -1;  // < 0: the type's budget
};

// --max-error PCT and --no-calibrate.
void add_calibration_options(std::vector<Option>* options, CalibrationSettings* settings);
// --max-error needs a calibration to bound: a block type, without --no-calibrate.
Status check_calibration_settings(const CalibrationSettings& settings, DType type);

// Re-types the .ddpm file `input` into `output` by `policy`, first calibrating (block types, U-Nets) and printing
// what it measured; `label` is how messages name the input (convert: the checkpoint, not its scratch f32 file).
// Prints errors as "ddpm TOOL: …" and returns the exit code (0, or 1); warnings stay in report->warnings.
int calibrate_and_retype(const char* tool, const std::string& input, const std::string& label,
                         const std::string& output, quant::TypePolicy& policy, const CalibrationSettings& settings,
                         int threads, quant::RetypeReport* report);

}  // namespace ddpm::tools
