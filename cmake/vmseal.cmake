# Helpers shared by the component CMakeLists.

# vmseal_test(NAME SOURCES... LIBS... LABELS...) builds one GoogleTest binary
# and registers each of its tests with CTest under the given labels.
#   vmseal_test(stream_test SOURCES a_test.cc LIBS vmseal_stream LABELS unit)
function(vmseal_test name)
  cmake_parse_arguments(T "" "TIMEOUT" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} vmseal_testing GTest::gtest
                        GTest::gmock GTest::gtest_main)
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  # gtest_discover_tests flattens list-valued properties; escape the
  # separators so "integration;tpm" stays one LABELS value.
  string(REPLACE ";" "\\;" labels "${T_LABELS}")
  set(env "VMSEAL_SOURCE_DIR=${CMAKE_SOURCE_DIR}\\;VMSEAL_BINARY=${CMAKE_BINARY_DIR}/vmseal")
  gtest_discover_tests(${name}
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}
    PROPERTIES LABELS "${labels}" TIMEOUT ${T_TIMEOUT} ENVIRONMENT "${env}"
    DISCOVERY_TIMEOUT 60)
endfunction()
