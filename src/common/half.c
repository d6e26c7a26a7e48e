/* half.c - PLACEHOLDER until half precision lands (truncating, wrong). */
#include "common/internal.h"
#include <string.h>
uint16_t mn_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return (uint16_t)(u >> 16);
}
float mn_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
uint16_t mn_f32_to_f16(float f) { return (uint16_t)f; }
float mn_f16_to_f32(uint16_t h) { return (float)h; }
void mn_f32_to_f16_n(const float *s, uint16_t *d, size_t n) {
  for (size_t i = 0; i < n; i++) d[i] = mn_f32_to_f16(s[i]);
}
void mn_f16_to_f32_n(const uint16_t *s, float *d, size_t n) {
  for (size_t i = 0; i < n; i++) d[i] = mn_f16_to_f32(s[i]);
}
void mn_f32_to_bf16_n(const float *s, uint16_t *d, size_t n) {
  for (size_t i = 0; i < n; i++) d[i] = mn_f32_to_bf16(s[i]);
}
void mn_bf16_to_f32_n(const uint16_t *s, float *d, size_t n) {
  for (size_t i = 0; i < n; i++) d[i] = mn_bf16_to_f32(s[i]);
}
