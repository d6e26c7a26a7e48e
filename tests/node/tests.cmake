# Node clients against a real mnemod: the seed's TypeScript examples with
# npm ws, a real MCP client (@modelcontextprotocol/sdk), the JavaScript
# client library clients/js (and its index.d.ts, with npm typescript), and
# the dashboard and clients/js in headless Chromium (npm playwright-core,
# Debian package chromium). `make deps` installs node_modules here and
# Chromium.
find_program(NODE_EXECUTABLE node)
if(NODE_EXECUTABLE)
  file(GLOB NODE_TESTS CONFIGURE_DEPENDS
       RELATIVE ${CMAKE_CURRENT_LIST_DIR} ${CMAKE_CURRENT_LIST_DIR}/*.test.mjs)
  list(REMOVE_ITEM NODE_TESTS dashboard.test.mjs js_client_browser.test.mjs)
  add_test(NAME node_clients
    COMMAND ${NODE_EXECUTABLE} --test ${NODE_TESTS}
    WORKING_DIRECTORY ${CMAKE_CURRENT_LIST_DIR})
  # Its own entry: a browser test that fails says so by name, and runs
  # beside the others under ctest -j.
  add_test(NAME node_dashboard
    COMMAND ${NODE_EXECUTABLE} --test dashboard.test.mjs
    WORKING_DIRECTORY ${CMAKE_CURRENT_LIST_DIR})
  add_test(NAME node_js_client_browser
    COMMAND ${NODE_EXECUTABLE} --test js_client_browser.test.mjs
    WORKING_DIRECTORY ${CMAKE_CURRENT_LIST_DIR})
  set_tests_properties(node_clients node_dashboard node_js_client_browser
    PROPERTIES
    ENVIRONMENT "MNEMOD=$<TARGET_FILE:mnemod>"
    TIMEOUT 300
    LABELS "integration")
else()
  message(WARNING "node not found: the Node client and dashboard tests are "
                  "not registered (make deps installs nodejs)")
endif()
