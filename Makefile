# ddpm.cpp — GNU make build. CMakeLists.txt builds the same targets from the same file lists.
#
#   make              library, `ddpm` binary and the test binary (build/)
#   make test         build and run the unit/differential/golden tests for this machine
#   make check        everything CI runs: installs missing packages, then native tests, scalar-forced tests,
#                     a SIMD-free build, ARM64 under qemu, and ASan+UBSan; ends with one "check: N passed, M failed"
#   make bench        `ddpm bench ops`
#
# Variables: BUILD=dir  CXX=compiler  SANITIZE=1 (ASan+UBSan)  NO_SIMD=1 (scalar kernels only)  OPT=-O2 …
#            DEBUG_INFO=-g (tests/check.sh builds with -g1: line tables only, a third less compile time)

BUILD    ?= build
CXX      ?= g++
OPT      ?= -O2
DEBUG_INFO ?= -g
CXXFLAGS ?=
LDFLAGS  ?=
TARGET_ARCH_NAME := $(shell $(CXX) -dumpmachine | cut -d- -f1)

# -falign-functions=64: a kernel's inner loop then sits at the same offset within a cache line whatever code is
# linked before it; left to chance, an unrelated change once moved the f32 GEMM kernel by 32 bytes and made the
# cifar10 U-Net forward take 14 % longer (AVX-512, 1 thread: 59 -> 67 ms).
BASE_FLAGS := -std=c++17 $(OPT) -falign-functions=64 $(DEBUG_INFO) -Wall -Wextra -Iinclude -Isrc -I. -pthread -MMD -MP
ifeq ($(SANITIZE),1)
  BASE_FLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
endif
ifeq ($(NO_SIMD),1)
  BASE_FLAGS += -DDDPM_NO_SIMD
endif
ALL_FLAGS := $(BASE_FLAGS) $(CXXFLAGS)

# Kernels for other ISAs are left out; each ISA directory is compiled with its own flags so that one binary runs
# on any CPU of its architecture and picks the level at start-up.
ISA_DIRS_x86_64  := src/kernels/avx2 src/kernels/avxvnni src/kernels/avx512 src/kernels/avx512vnni
ISA_DIRS_aarch64 := src/kernels/neon src/kernels/neon_dotprod
ALL_ISA_DIRS     := src/kernels/avx2 src/kernels/avxvnni src/kernels/avx512 src/kernels/avx512vnni src/kernels/neon src/kernels/neon_dotprod
KEEP_ISA_DIRS    := $(if $(filter 1,$(NO_SIMD)),,$(ISA_DIRS_$(TARGET_ARCH_NAME)))
DROP_ISA_DIRS    := $(filter-out $(KEEP_ISA_DIRS),$(ALL_ISA_DIRS))

LIB_SRCS  := $(filter-out $(addsuffix /%,$(DROP_ISA_DIRS)),$(shell find src -name '*.cpp' | sort))
TOOL_SRCS := $(shell find tools -name '*.cpp' | sort)
TEST_SRCS := $(shell find tests -maxdepth 1 -name '*.cpp' | sort)

LIB_OBJS  := $(LIB_SRCS:%.cpp=$(BUILD)/%.o)
TOOL_OBJS := $(TOOL_SRCS:%.cpp=$(BUILD)/%.o)
TEST_OBJS := $(TEST_SRCS:%.cpp=$(BUILD)/%.o)

FLAGS_src/kernels/avx2   := -mavx2 -mfma -mf16c
# AVX-VNNI (VEX) without any AVX-512 flag: its kernel runs on CPUs that have no AVX-512 at all.
FLAGS_src/kernels/avxvnni := -mavx2 -mfma -mf16c -mavxvnni
# VNNI only in its own directory: a Skylake-X without it must never meet a vpdpbusd the compiler chose.
FLAGS_src/kernels/avx512 := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c
FLAGS_src/kernels/avx512vnni := -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mavx2 -mfma -mf16c
# ARMv8.2 dot product (sdot), an option the Cortex-A72 lacks: only run when HWCAP_ASIMDDP is set.
FLAGS_src/kernels/neon_dotprod := -march=armv8.2-a+dotprod
isa_flags = $(FLAGS_$(patsubst %/,%,$(dir $(1))))

.PHONY: all test check bench demo clean
all: $(BUILD)/libddpm.a $(BUILD)/ddpm $(BUILD)/ddpm_tests

$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(ALL_FLAGS) $(call isa_flags,$<) -c $< -o $@

$(BUILD)/libddpm.a: $(LIB_OBJS)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/ddpm: $(TOOL_OBJS) $(BUILD)/libddpm.a
	$(CXX) $(ALL_FLAGS) $^ -o $@ $(LDFLAGS)

$(BUILD)/ddpm_tests: $(TEST_OBJS) $(BUILD)/libddpm.a
	$(CXX) $(ALL_FLAGS) $^ -o $@ $(LDFLAGS)

test: $(BUILD)/ddpm_tests $(BUILD)/ddpm
	cd tests && DDPM_BIN=../$(BUILD)/ddpm ../$(BUILD)/ddpm_tests

check:
	bash tests/check.sh

bench: $(BUILD)/ddpm
	$(BUILD)/ddpm bench ops

# The shipped model: two samples of each Fashion-MNIST class (one class per column), DDIM 50 steps with the model's
# own guidance scale, seed fixed so the picture is the one in models/README.md.
DEMO_MODEL ?= models/fashion-mnist.ddpm
demo: $(BUILD)/ddpm
	$(BUILD)/ddpm generate -m $(DEMO_MODEL) -n 20 --sampler ddim --steps 50 --seed 1 --scale 3 -o $(BUILD)/demo.png
	@echo "demo: wrote $(CURDIR)/$(BUILD)/demo.png"

clean:
	rm -rf build build-*

-include $(LIB_OBJS:.o=.d) $(TOOL_OBJS:.o=.d) $(TEST_OBJS:.o=.d)
