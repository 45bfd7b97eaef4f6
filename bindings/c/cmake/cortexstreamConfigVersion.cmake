# Which `find_package(cortexstream X.Y)` requests this installed version (@VERSION@) satisfies:
# the same major version (the ABI, as CS_VERSION_MAJOR promises) and at least the minor asked.
set(PACKAGE_VERSION "@VERSION@")
if(PACKAGE_FIND_VERSION_MAJOR STREQUAL "@MAJOR@" AND NOT PACKAGE_VERSION VERSION_LESS PACKAGE_FIND_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
elseif(NOT PACKAGE_FIND_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
else()
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
endif()
# A 64-bit library does not serve a 32-bit build.
if(NOT CMAKE_SIZEOF_VOID_P STREQUAL "8")
  set(PACKAGE_VERSION "${PACKAGE_VERSION} (64-bit)")
  set(PACKAGE_VERSION_UNSUITABLE TRUE)
endif()
