# Compiler flags of the fuzz build (-DVMSEAL_FUZZ=ON), included by the
# top-level CMakeLists.txt before any component so that every project library
# is instrumented the same way. Debian's system libraries (OpenSSL, libxml2,
# tss2, ...) are used as they are.
if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
  message(FATAL_ERROR "VMSEAL_FUZZ needs clang: CC=clang-16 CXX=clang++-16 cmake ...")
endif()

if(VMSEAL_FUZZ_COVERAGE)
  # Source-based coverage (llvm-cov); libFuzzer only replays the corpora.
  set(VMSEAL_FUZZ_COMPILE_FLAGS -fsanitize=fuzzer-no-link -fprofile-instr-generate
                                -fcoverage-mapping)
  set(VMSEAL_FUZZ_LINK_FLAGS -fsanitize=fuzzer -fprofile-instr-generate)
else()
  set(VMSEAL_FUZZ_COMPILE_FLAGS -fsanitize=fuzzer-no-link,address,undefined
                                -fno-sanitize-recover=all -fno-omit-frame-pointer)
  set(VMSEAL_FUZZ_LINK_FLAGS -fsanitize=fuzzer,address,undefined)
  # Executables other than the fuzzers (the vmseal binary, tests) link the
  # sanitizer runtimes; fuzz.sh builds only the fuzzers.
  add_link_options(-fsanitize=address,undefined)
endif()
add_compile_options(${VMSEAL_FUZZ_COMPILE_FLAGS})
