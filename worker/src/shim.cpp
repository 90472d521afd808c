// bf16 autocast for CUDA, which tch does not expose: the same calls as
// `torch.autocast("cuda", dtype=torch.bfloat16)` makes on entry and exit.
#include <ATen/autocast_mode.h>

extern "C" void idc_autocast_bf16_enter() {
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  at::autocast::increment_nesting();
}

extern "C" void idc_autocast_bf16_exit() {
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
  at::autocast::set_autocast_enabled(at::kCUDA, false);
}
