# deploy/ checked with the real programs (tests/deploy/test_deploy.py):
# HAProxy with deploy/haproxy.cfg in front of real mnemods, promtool on
# deploy/prometheus.yml, deploy/alerts.yml and mnemod's /metrics, the
# systemd unit, and the mdb_copy backup of docs/operations.md. haproxy,
# openssl, promtool and mdb_copy come from the Makefile's TEST_PKGS; without
# them the tests fail and name the package.
add_test(NAME deploy_pytest
  COMMAND /usr/bin/python3 -m pytest -q -p no:cacheprovider
          ${CMAKE_CURRENT_LIST_DIR}
  WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(deploy_pytest PROPERTIES
  ENVIRONMENT "MNEMOD=$<TARGET_FILE:mnemod>;PYTHONDONTWRITEBYTECODE=1"
  TIMEOUT 300
  LABELS "integration;deploy")
