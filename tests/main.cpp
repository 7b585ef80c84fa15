// Test runner: Catch2 (Debian's v2) with a closing line CI can read: "ddpm_tests: N passed, M failed".
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>

#include "kernels/registry.h"

namespace {

struct ClosingLine : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testRunEnded(Catch::TestRunStats const& stats) override {
    const auto& cases = stats.totals.testCases;
    std::printf("ddpm_tests[%s]: %zu passed, %zu failed\n", ddpm::kernels::active().isa_name,
                static_cast<size_t>(cases.passed + cases.failedButOk), static_cast<size_t>(cases.failed));
  }
};

}  // namespace

CATCH_REGISTER_LISTENER(ClosingLine)

int main(int argc, char* argv[]) {
  ddpm::Status status = ddpm::kernels::init_from_environment();
  if (!status.ok()) {
    std::fprintf(stderr, "ddpm_tests: %s\n", status.message().c_str());
    return 2;
  }
  return Catch::Session().run(argc, argv);
}
