#include "tools/subcommands.h"

namespace ddpm::tools {

const std::vector<Subcommand>& subcommands() {
  static const std::vector<Subcommand> table = {
      {"bench", "benchmarks: `bench ops`", run_bench},
  };
  return table;
}

}  // namespace ddpm::tools
