/* Preloaded into Intel's ipex-llm build of Ollama (scripts/real_ollama.py) on a machine without an Intel GPU.
 *
 * Its ggml registers a SYCL backend at start; with no Level Zero or OpenCL GPU device the SYCL runtime throws
 * (UR_RESULT_ERROR_INVALID_VALUE) and the process aborts before it serves. These two symbols, found before
 * libollama-ggml-sycl.so's own, make the SYCL backend register nothing and report no device, so ggml falls back
 * to its CPU backend. */
#include <stddef.h>

void *ggml_backend_sycl_reg(void) { return NULL; }

int ggml_backend_sycl_get_device_count(void) { return 0; }
