# CMake package config of the cortexstream C library, installed by bindings/c/build.sh --prefix.
#
#   find_package(cortexstream 0.1 REQUIRED)
#   target_link_libraries(app PRIVATE cortexstream::cortexstream)          # shared
#   target_link_libraries(app PRIVATE cortexstream::cortexstream_static)   # static
#
# Paths are found relative to this file (<prefix>/lib/cmake/cortexstream/), so the installed
# prefix can be moved as a whole.
get_filename_component(_cortexstream_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)

if(NOT TARGET cortexstream::cortexstream)
  add_library(cortexstream::cortexstream SHARED IMPORTED)
  set_target_properties(cortexstream::cortexstream PROPERTIES
    IMPORTED_LOCATION "${_cortexstream_prefix}/lib/libcortexstream.so.@VERSION@"
    IMPORTED_SONAME "libcortexstream.so.@MAJOR@"
    INTERFACE_INCLUDE_DIRECTORIES "${_cortexstream_prefix}/include")
endif()

if(NOT TARGET cortexstream::cortexstream_static)
  # The Rust standard library in the archive needs threads, libdl and libm.
  include(CMakeFindDependencyMacro)
  find_dependency(Threads)
  add_library(cortexstream::cortexstream_static STATIC IMPORTED)
  set_target_properties(cortexstream::cortexstream_static PROPERTIES
    IMPORTED_LOCATION "${_cortexstream_prefix}/lib/libcortexstream.a"
    INTERFACE_INCLUDE_DIRECTORIES "${_cortexstream_prefix}/include"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;${CMAKE_DL_LIBS};m")
endif()

unset(_cortexstream_prefix)
