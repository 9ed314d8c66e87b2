# Helpers shared by the component CMakeLists.

# vmseal_unit_tests builds every test binary labelled "unit" (and the vmseal
# binary that some of them run): the sanitizer build compiles only those
# (scripts/test.sh), not the integration tests and benchmarks it never runs.
if(NOT TARGET vmseal_unit_tests)
  add_custom_target(vmseal_unit_tests)
  add_dependencies(vmseal_unit_tests vmseal)
endif()

# vmseal_test(NAME SOURCES... LIBS... LABELS... [TIMEOUT s] [COST s]) builds one GoogleTest binary
# and registers each of its tests with CTest under the given labels.
#   vmseal_test(stream_test SOURCES a_test.cc LIBS vmseal_stream LABELS unit)
function(vmseal_test name)
  cmake_parse_arguments(T "" "TIMEOUT;COST" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  if("unit" IN_LIST T_LABELS)
    add_dependencies(vmseal_unit_tests ${name})
  endif()
  # The test's own code at -O1 (the libraries it tests keep the build's
  # -O3): gtest-heavy test sources compile about a third faster
  # (csp/http_api_test.cc: 70 s against 107 s under load) and spend their
  # time in the libraries and the processes they start, not in their own code.
  target_compile_options(${name} PRIVATE $<$<CONFIG:Release>:-O1>)
  target_link_libraries(${name} PRIVATE ${T_LIBS} vmseal_testing GTest::gtest
                        GTest::gmock GTest::gtest_main)
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  if(VMSEAL_TESTS_PER_BINARY)
    add_test(NAME ${name} COMMAND ${name} WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(${name} PROPERTIES LABELS "${T_LABELS}" TIMEOUT 900
      ENVIRONMENT "VMSEAL_SOURCE_DIR=${CMAKE_SOURCE_DIR};VMSEAL_BINARY=${CMAKE_BINARY_DIR}/vmseal")
    return()
  endif()
  # gtest_discover_tests (CMake 3.25) flattens list-valued PROPERTIES, so
  # "integration;tpm" would become two arguments and lose "tpm". Set the
  # list-valued properties from an include file of our own that runs after
  # the discovered tests are defined (TEST_LIST names them).
  gtest_discover_tests(${name}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
    PROPERTIES TIMEOUT ${T_TIMEOUT}
    TEST_LIST ${name}_TESTS
    DISCOVERY_TIMEOUT 60)
  # COST orders a parallel run on a fresh checkout (no CTestCostData.txt
  # yet): ctest -j starts the costliest tests first, so a VM boot does not
  # start last beside an idle core. Rough seconds per test by label.
  set(cost 0)
  foreach(label_cost "unit=0" "integration=3" "tpm=5" "pg=5" "s3=5" "large=10" "e2e=20" "qemu=30")
    string(REPLACE "=" ";" lc "${label_cost}")
    list(GET lc 0 l)
    list(GET lc 1 c)
    if(l IN_LIST T_LABELS AND c GREATER cost)
      set(cost ${c})
    endif()
  endforeach()
  if(T_COST)
    set(cost ${T_COST})
  endif()
  set(props "${CMAKE_CURRENT_BINARY_DIR}/${name}_properties.cmake")
  file(WRITE "${props}"
    "if(${name}_TESTS)\n"
    "  set_tests_properties(\${${name}_TESTS} PROPERTIES\n"
    "    LABELS \"${T_LABELS}\"\n"
    "    COST ${cost}\n"
    "    ENVIRONMENT \"VMSEAL_SOURCE_DIR=${CMAKE_SOURCE_DIR};VMSEAL_BINARY=${CMAKE_BINARY_DIR}/vmseal\")\n"
    "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${props}")
endfunction()
