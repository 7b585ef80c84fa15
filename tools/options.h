// One option table shared by every `ddpm` subcommand: each option is a record (names, value hint, help with its
// default, handler), so parsing, usage text and error messages are generic.
#pragma once

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "ddpm/status.h"

namespace ddpm {
class Model;
}

namespace ddpm::tools {

struct Option {
  std::string long_name;   // without the leading "--"
  char short_name = 0;     // 0: none
  std::string value_hint;  // empty: a flag that takes no value
  std::string help;
  std::function<Status(const std::string& value)> apply;
};

struct CommonSettings {
  int threads = 0;      // 0: physical cores
  std::string isa = "auto";
};

// -t/--threads and --isa, understood by every subcommand.
void add_common_options(std::vector<Option>* options, CommonSettings* settings);
// Applies --isa (after DDPM_ISA from the environment); call once options are parsed.
Status apply_common_settings(const CommonSettings& settings);

// --int8-winograd auto|on|off, for the subcommands that run a model (generate, eval, forward): whether its
// block-typed 3×3 convs run by Winograd with 8-bit transformed filters (Model::set_int8_winograd). The handler
// accepts only those three words.
void add_int8_winograd_option(std::vector<Option>* options, std::string* mode);
// "on"/"off" set the loaded model's choice; "auto" keeps the one Model::load made.
void apply_int8_winograd(const std::string& mode, Model* model);

// Parses argv[first..argc): "--name value", "--name=value", "-x value", flags. Unknown options, missing values and
// handler errors become a Status naming the option. Non-option arguments go to `positional`.
Status parse_options(int argc, char** argv, int first, const std::vector<Option>& options,
                     std::vector<std::string>* positional, bool* help_requested);
void print_usage(FILE* out, const char* synopsis, const std::vector<Option>& options);

// A handler that stores the option's value as it is (file names, comma lists parsed later).
inline std::function<Status(const std::string&)> text(std::string* target) {
  return [target](const std::string& value) {
    *target = value;
    return Status();
  };
}

// A file a command reads or writes, named for messages ("the input model", "--save-raw's file").
struct FileRole {
  std::string path;  // empty: not used this run
  const char* role;
};
// Fails, naming both, when an output would overwrite an input or another output (check_distinct_paths): a model
// written over the data it was trained on is not recoverable. Call it before any long work.
Status check_file_roles(const std::vector<FileRole>& outputs, const std::vector<FileRole>& inputs);

// Value parsers with range checks; errors name the option.
Status parse_int(const std::string& option, const std::string& value, long long min, long long max, long long* out);
Status parse_float(const std::string& option, const std::string& value, double min, double max, double* out);

}  // namespace ddpm::tools
