# docs/config.md is generated from the configuration key table
# (src/common/config.c): `cmake --build build --target config_docs`
# rewrites it, and test_config_doc fails when the committed file differs
# from what the table says.
add_executable(gen_config_md ${CMAKE_CURRENT_LIST_DIR}/gen_config_md.c)
target_link_libraries(gen_config_md PRIVATE mnemo_static)
set_target_properties(gen_config_md PROPERTIES
  RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
add_custom_target(config_docs
  COMMAND gen_config_md ${PROJECT_SOURCE_DIR}/docs/config.md
  DEPENDS gen_config_md
  COMMENT "Writing docs/config.md from the configuration key table")
if(TARGET test_config_doc)
  target_compile_definitions(test_config_doc PRIVATE
    MNEMO_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
endif()
