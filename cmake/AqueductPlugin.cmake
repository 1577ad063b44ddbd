# AqueductPlugin.cmake — aq_add_plugin(): build an operator plugin (a MODULE library) for Aqueduct.
#
#   find_package(Aqueduct 0.1 REQUIRED)
#   aq_add_plugin(myorg_ops SOURCES my_ops.cpp)        # -> libmyorg_ops.so
#
# The plugin sees only Aqueduct's headers (Aqueduct::headers: aqueduct/op_abi.h, the C ABI, and
# aqueduct/op_plugin.hpp, its C++ builder) and links no Aqueduct library: everything crosses the C ABI. Symbols
# are hidden except the entry point aq_plugin_init (AQ_PLUGIN_EXPORT), so two plugins never clash, and an
# undefined symbol fails the link here instead of the dlopen in a training job.
# Options: CUDA_ARCHITECTURES "80;90" for plugins with .cu sources (declare the same list with
# Builder::cuda_archs so `aq-op inspect` can show it).
function(aq_add_plugin name)
  cmake_parse_arguments(AQP "" "" "SOURCES;CUDA_ARCHITECTURES" ${ARGN})
  if(NOT AQP_SOURCES)
    message(FATAL_ERROR "aq_add_plugin(${name}): no SOURCES given; write aq_add_plugin(${name} SOURCES file.cpp ...)")
  endif()
  add_library(${name} MODULE ${AQP_SOURCES})
  if(TARGET Aqueduct::headers)
    target_link_libraries(${name} PRIVATE Aqueduct::headers)
  else()
    target_link_libraries(${name} PRIVATE aq_headers)
  endif()
  target_compile_features(${name} PRIVATE cxx_std_17)
  set_target_properties(${name} PROPERTIES
    PREFIX "lib" SUFFIX ".so"
    C_VISIBILITY_PRESET hidden CXX_VISIBILITY_PRESET hidden CUDA_VISIBILITY_PRESET hidden
    VISIBILITY_INLINES_HIDDEN ON POSITION_INDEPENDENT_CODE ON)
  if(AQP_CUDA_ARCHITECTURES)
    set_target_properties(${name} PROPERTIES CUDA_ARCHITECTURES "${AQP_CUDA_ARCHITECTURES}")
  endif()
  if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
    # A version script keeps even the standard library's template instantiations (which libstdc++ marks
    # visibility default) out of the dynamic symbol table: the entry point is the plugin's only export.
    set(map "${CMAKE_CURRENT_BINARY_DIR}/${name}.aq_plugin.map")
    file(WRITE "${map}" "{ global: aq_plugin_init; local: *; };\n")
    target_link_options(${name} PRIVATE "LINKER:--no-undefined" "LINKER:--version-script=${map}")
    set_property(TARGET ${name} APPEND PROPERTY LINK_DEPENDS "${map}")
  endif()
endfunction()
