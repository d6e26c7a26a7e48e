# Node clients against a real mnemod: the seed's TypeScript examples with
# npm ws, and a real MCP client (@modelcontextprotocol/sdk). `make deps`
# installs node_modules here.
find_program(NODE_EXECUTABLE node)
if(NODE_EXECUTABLE)
  add_test(NAME node_clients
    COMMAND ${NODE_EXECUTABLE} --test
    WORKING_DIRECTORY ${CMAKE_CURRENT_LIST_DIR})
  set_tests_properties(node_clients PROPERTIES
    ENVIRONMENT "MNEMOD=$<TARGET_FILE:mnemod>"
    TIMEOUT 300
    LABELS "integration")
else()
  message(WARNING "node not found: the Node client tests are not registered "
                  "(make deps installs nodejs)")
endif()
