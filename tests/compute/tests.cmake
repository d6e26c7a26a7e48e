# Fake backend plugins for the tests that load plugins (test_backend_loader,
# test_cpu_fallback): one MODULE library per tests/compute/fake_plugin_*.c,
# never linked against libmnemo (a plugin reaches the core only through
# mn_backend_host). Each such test finds each plugin through a compile
# definition FAKE_PLUGIN_<NAME> holding its path.
file(GLOB FAKE_PLUGIN_SOURCES CONFIGURE_DEPENDS
     ${CMAKE_CURRENT_LIST_DIR}/fake_plugin_*.c)
foreach(src ${FAKE_PLUGIN_SOURCES})
  get_filename_component(name ${src} NAME_WE)
  add_library(${name} MODULE ${src})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR}/include
                             ${PROJECT_SOURCE_DIR}/src)
  set_target_properties(${name} PROPERTIES
    LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests/fake_plugins)
  string(TOUPPER ${name} def)
  foreach(consumer test_backend_loader test_cpu_fallback)
    if(TARGET ${consumer})
      target_compile_definitions(${consumer} PRIVATE
        ${def}="$<TARGET_FILE:${name}>")
      add_dependencies(${consumer} ${name})
    endif()
  endforeach()
endforeach()
