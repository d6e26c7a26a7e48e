# Integration tests: pytest (/usr/bin/python3, python3-websockets, numpy)
# against a real mnemod started on a free port with a temporary data dir.
add_test(NAME integration_pytest
  COMMAND /usr/bin/python3 -m pytest -q -p no:cacheprovider
          ${CMAKE_CURRENT_LIST_DIR}
  WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
set_tests_properties(integration_pytest PROPERTIES
  ENVIRONMENT "MNEMOD=$<TARGET_FILE:mnemod>;MNEMO_CLI=$<TARGET_FILE:mnemo-cli>;PYTHONDONTWRITEBYTECODE=1"
  TIMEOUT 600
  LABELS "integration")

# The same suite on the CUDA backend, where the plugin is built; it skips
# without a GPU.
if(TARGET mnemo-cuda)
  add_test(NAME integration_pytest_cuda
    COMMAND sh ${CMAKE_CURRENT_LIST_DIR}/run_cuda.sh /usr/bin/python3
            ${CMAKE_CURRENT_LIST_DIR}
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(integration_pytest_cuda PROPERTIES
    ENVIRONMENT "MNEMOD=$<TARGET_FILE:mnemod>;MNEMO_CLI=$<TARGET_FILE:mnemo-cli>;PYTHONDONTWRITEBYTECODE=1"
    SKIP_RETURN_CODE 77
    TIMEOUT 600
    LABELS "integration;cuda")
endif()

# ... and on the plugin built for the host emulator (MNEMO_CUDA_EMU), which
# runs where there is no GPU, as on CI: every device path of the server
# (device uploads, the store's L1 chunks and their searches, batching,
# fallbacks) with real kernels, slowly.
if(TARGET mnemo-cuda-emu)
  add_test(NAME integration_pytest_emu
    COMMAND /usr/bin/python3 -m pytest -q -p no:cacheprovider
            ${CMAKE_CURRENT_LIST_DIR}
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR})
  set_tests_properties(integration_pytest_emu PROPERTIES
    ENVIRONMENT "MNEMOD=$<TARGET_FILE:mnemod>;MNEMO_CLI=$<TARGET_FILE:mnemo-cli>;MNEMO_TEST_DEVICE=cuda;MNEMO_BACKEND_PATH=$<TARGET_FILE:mnemo-cuda-emu>;PYTHONDONTWRITEBYTECODE=1"
    TIMEOUT 900
    LABELS "integration;cuda;emu")
endif()
