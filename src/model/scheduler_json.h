// diffusers scheduler_config.json ⇄ SchedulerConfig. Keys missing from the file take diffusers' defaults; keys of
// other schedulers are ignored, as DDIMPipeline's from_config does.
#pragma once

#include "io/json.h"
#include "model/schedule.h"

namespace ddpm {

Status scheduler_config_from_json(const JsonValue& json, SchedulerConfig* out);
JsonValue scheduler_config_to_json(const SchedulerConfig& config);

}  // namespace ddpm
