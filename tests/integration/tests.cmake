# Integration tests: pytest (/usr/bin/python3, python3-websockets, numpy)
# against a real mnemod started on a free port with a temporary data dir.
add_test(NAME integration_pytest
  COMMAND /usr/bin/python3 -m pytest -q -p no:cacheprovider
          ${CMAKE_CURRENT_LIST_DIR}
  WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(integration_pytest PROPERTIES
  ENVIRONMENT "MNEMOD=$<TARGET_FILE:mnemod>;PYTHONDONTWRITEBYTECODE=1"
  TIMEOUT 600
  LABELS "integration")
