# docs/API.md and docs/config.md are generated from the method table
# (src/rpc/methods.c) and the configuration key table (src/common/config.c):
# `cmake --build build --target api_docs` / `--target config_docs` rewrite
# them, and test_api_doc / test_config_doc fail when a committed file
# differs from what its table says.
add_executable(gen_doc ${CMAKE_CURRENT_LIST_DIR}/gen_doc.c)
target_link_libraries(gen_doc PRIVATE mnemo_static)
set_target_properties(gen_doc PROPERTIES
  RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
add_custom_target(api_docs
  COMMAND gen_doc api ${PROJECT_SOURCE_DIR}/docs/API.md
  DEPENDS gen_doc
  COMMENT "Writing docs/API.md from the method table")
add_custom_target(config_docs
  COMMAND gen_doc config ${PROJECT_SOURCE_DIR}/docs/config.md
  DEPENDS gen_doc
  COMMENT "Writing docs/config.md from the configuration key table")
foreach(t test_api_doc test_config_doc)
  if(TARGET ${t})
    target_compile_definitions(${t} PRIVATE
      MNEMO_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  endif()
endforeach()
