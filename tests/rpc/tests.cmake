# docs/API.md is generated from the method table (src/rpc/methods.c):
# `cmake --build build --target api_docs` rewrites it, and test_api_doc
# fails when the committed file differs from what the table says.
add_executable(gen_api_md ${CMAKE_CURRENT_LIST_DIR}/gen_api_md.c)
target_link_libraries(gen_api_md PRIVATE mnemo_static)
set_target_properties(gen_api_md PROPERTIES
  RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/tests)
add_custom_target(api_docs
  COMMAND gen_api_md ${PROJECT_SOURCE_DIR}/docs/API.md
  DEPENDS gen_api_md
  COMMENT "Writing docs/API.md from the method table")
if(TARGET test_api_doc)
  target_compile_definitions(test_api_doc PRIVATE
    MNEMO_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
endif()
