// The table of `ddpm` subcommands. A subcommand's run() receives the full argv (argv[1] is its name) and returns
// the process exit code: 0 success, 1 failure at run time, 2 bad usage.
#pragma once

#include <vector>

namespace ddpm::tools {

struct Subcommand {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

const std::vector<Subcommand>& subcommands();

int run_bench(int argc, char** argv);
int run_convert(int argc, char** argv);
int run_generate(int argc, char** argv);
int run_info(int argc, char** argv);
int run_quantize(int argc, char** argv);
int run_schedule(int argc, char** argv);
int run_forward(int argc, char** argv);
int run_train(int argc, char** argv);
int run_eval(int argc, char** argv);

}  // namespace ddpm::tools
