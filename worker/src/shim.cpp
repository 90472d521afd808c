// The ATen features tch 0.24 does not wrap, for the worker's Rust side (`shim.rs`):
//  - bf16 autocast for CUDA (the calls `torch.autocast("cuda", dtype=torch.bfloat16)` makes);
//  - the multi-tensor optimizer kernels (`_fused_sgd_`, `_fused_adam_`, `_fused_adamw_`),
//    gradient clipping through `_foreach_norm` / `_foreach_mul_`, and gradients set to none;
//  - op counters: a thread-local RecordFunction callback counting ATen ops (all, and those the
//    caller dispatched itself), host-to-device copies and device-to-host reads.
//
// The private `_foreach_*` / `_fused_*` operators are looked up in the dispatcher by name at run
// time rather than linked, so a libtorch that lacks one is a clear error, not a loader failure.
// Every function that can fail returns nullptr or an error string (see shim_error.h).
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/record_function.h>

#include <atomic>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "shim_error.h"

namespace {

using idc_shim::guarded;

struct MissingOp : std::runtime_error {
  explicit MissingOp(const std::string& name)
      : std::runtime_error("missing operator " + name) {}
};

// "aten::_fused_sgd_" or "aten::_foreach_norm.Scalar".
c10::OperatorHandle find_op(const std::string& qualified) {
  auto dot = qualified.find('.');
  std::string name = qualified.substr(0, dot);
  std::string overload = dot == std::string::npos ? "" : qualified.substr(dot + 1);
  auto op = c10::Dispatcher::singleton().findSchema({name, overload});
  if (!op.has_value()) throw MissingOp(qualified);
  return *op;
}

using OptTensor = std::optional<at::Tensor>;

const auto& fused_sgd() {
  static auto op = find_op("aten::_fused_sgd_")
                       .typed<void(at::TensorList, at::TensorList, at::TensorList, double, double,
                                   double, double, bool, bool, bool, const OptTensor&,
                                   const OptTensor&)>();
  return op;
}

using FusedAdam = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                       at::TensorList, at::TensorList, double, double, double, double, double,
                       bool, bool, const OptTensor&, const OptTensor&);

const auto& fused_adam() {
  static auto op = find_op("aten::_fused_adam_").typed<FusedAdam>();
  return op;
}

const auto& fused_adamw() {
  static auto op = find_op("aten::_fused_adamw_").typed<FusedAdam>();
  return op;
}

const auto& foreach_norm() {
  static auto op =
      find_op("aten::_foreach_norm.Scalar")
          .typed<std::vector<at::Tensor>(at::TensorList, const at::Scalar&,
                                         std::optional<at::ScalarType>)>();
  return op;
}

const auto& foreach_mul_tensor() {
  static auto op =
      find_op("aten::_foreach_mul_.Tensor").typed<void(at::TensorList, const at::Tensor&)>();
  return op;
}

// The gradients of `params` that are defined, with the indices they came from.
std::vector<at::Tensor> grads_of(at::Tensor** params, size_t n, std::vector<size_t>* which) {
  std::vector<at::Tensor> grads;
  grads.reserve(n);
  for (size_t i = 0; i < n; i++) {
    const at::Tensor& g = params[i]->grad();
    if (g.defined()) {
      grads.push_back(g);
      if (which) which->push_back(i);
    }
  }
  return grads;
}

std::vector<at::Tensor> pick(at::Tensor** ts, const std::vector<size_t>& which) {
  std::vector<at::Tensor> out;
  out.reserve(which.size());
  for (size_t i : which) out.push_back(*ts[i]);
  return out;
}

// ---- op counters ----

std::atomic<uint64_t> g_ops{0}, g_top{0}, g_h2d{0}, g_d2h{0};
std::optional<at::CallbackHandle> g_handle;
// The ops open on this thread, innermost last (for "is this read made by the caller?").
thread_local std::vector<const char*> t_open;

bool is(const char* a, const char* b) { return std::strcmp(a, b) == 0; }

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  const char* name = fn.name();
  size_t depth = t_open.size();
  const char* parent = depth == 0 ? nullptr : t_open[depth - 1];
  const char* grandparent = depth < 2 ? nullptr : t_open[depth - 2];
  t_open.push_back(name);
  if (std::strncmp(name, "aten::", 6) != 0) {
    return nullptr;
  }
  g_ops.fetch_add(1, std::memory_order_relaxed);
  if (parent == nullptr) g_top.fetch_add(1, std::memory_order_relaxed);
  if (is(name, "aten::_local_scalar_dense")) {
    auto in = fn.inputs();
    bool on_device = !in.empty() && in[0].isTensor() && !in[0].toTensor().is_cpu();
    // On a device every read waits for it. On the CPU a read made by the step itself (not inside
    // another op's kernel, e.g. the CPU fused Adam reading its step counter) is the one that
    // would wait for a device, so it is counted too.
    bool by_caller = parent == nullptr || (is(parent, "aten::item") && grandparent == nullptr);
    if (on_device || by_caller) g_d2h.fetch_add(1, std::memory_order_relaxed);
  } else if (is(name, "aten::copy_")) {
    auto in = fn.inputs();
    if (in.size() >= 2 && in[0].isTensor() && in[1].isTensor()) {
      bool dst_cpu = in[0].toTensor().is_cpu(), src_cpu = in[1].toTensor().is_cpu();
      if (src_cpu && !dst_cpu) g_h2d.fetch_add(1, std::memory_order_relaxed);
      if (!src_cpu && dst_cpu) g_d2h.fetch_add(1, std::memory_order_relaxed);
    }
  }
  return nullptr;
}

void on_end(const at::RecordFunction&, at::ObserverContext*) {
  if (!t_open.empty()) t_open.pop_back();
}

}  // namespace

extern "C" {

void idc_free_error(char* e) { free(e); }

// ---- autocast ----

void idc_autocast_bf16_enter() {
  at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
  at::autocast::set_autocast_enabled(at::kCUDA, true);
  at::autocast::increment_nesting();
}

void idc_autocast_bf16_exit() {
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
  at::autocast::set_autocast_enabled(at::kCUDA, false);
}

// ---- operators ----

// Checks that the dispatcher knows `name` ("aten::op" or "aten::op.overload").
char* idc_require_op(const char* name) {
  return guarded([&] { find_op(name); });
}

// Resolves every operator the worker calls through the shim.
char* idc_require_ops() {
  return guarded([] {
    fused_sgd();
    fused_adam();
    fused_adamw();
    foreach_norm();
    foreach_mul_tensor();
  });
}

// Sets the gradients of `params` to none (PyTorch's `zero_grad(set_to_none=True)`): no kernel.
void idc_grads_to_none(at::Tensor** params, size_t n) {
  for (size_t i = 0; i < n; i++) params[i]->mutable_grad().reset();
}

// Scales the gradients so that their global L2 norm is at most `max_norm`, as
// `torch.nn.utils.clip_grad_norm_(foreach=True)`; `*total` receives the norm before (a device
// scalar: reading it is the caller's choice).
char* idc_clip_grad_norm(at::Tensor** params, size_t n, double max_norm, at::Tensor** total) {
  return guarded([&] {
    auto grads = grads_of(params, n, nullptr);
    if (grads.empty()) {
      *total = nullptr;
      return;
    }
    auto norms = foreach_norm().call(grads, 2.0, std::nullopt);
    at::Tensor norm = at::linalg_vector_norm(at::stack(norms), 2.0);
    at::Tensor coef = at::clamp_max(max_norm / (norm + 1e-6), 1.0);
    foreach_mul_tensor().call(grads, coef);
    *total = new at::Tensor(norm);
  });
}

// One SGD step over every parameter with a gradient (`_fused_sgd_`): weight decay, momentum
// (`bufs` may be null when momentum is 0), Nesterov.
char* idc_fused_sgd(at::Tensor** params, at::Tensor** bufs, size_t n, double lr, double momentum,
                    double weight_decay, bool nesterov, bool first_step) {
  return guarded([&] {
    std::vector<size_t> which;
    auto grads = grads_of(params, n, &which);
    if (grads.empty()) return;
    auto ps = pick(params, which);
    std::vector<at::Tensor> bs = bufs ? pick(bufs, which) : std::vector<at::Tensor>{};
    fused_sgd().call(ps, grads, bs, weight_decay, momentum, lr, /*dampening=*/0.0, nesterov,
                     /*maximize=*/false, first_step, std::nullopt, std::nullopt);
  });
}

// One Adam (or, `decoupled`, AdamW) step (`_fused_adam_` / `_fused_adamw_`). `step` is a float
// scalar tensor on the parameters' device holding the step number, shared by every parameter.
char* idc_fused_adam(at::Tensor** params, at::Tensor** exp_avgs, at::Tensor** exp_avg_sqs,
                     at::Tensor* step, size_t n, double lr, double beta1, double beta2,
                     double weight_decay, double eps, bool decoupled) {
  return guarded([&] {
    std::vector<size_t> which;
    auto grads = grads_of(params, n, &which);
    if (grads.empty()) return;
    auto ps = pick(params, which);
    auto m = pick(exp_avgs, which);
    auto v = pick(exp_avg_sqs, which);
    std::vector<at::Tensor> steps(ps.size(), *step);
    const auto& op = decoupled ? fused_adamw() : fused_adam();
    op.call(ps, grads, m, v, /*max_exp_avg_sqs=*/{}, steps, lr, beta1, beta2, weight_decay, eps,
            /*amsgrad=*/false, /*maximize=*/false, std::nullopt, std::nullopt);
  });
}

// ---- op counters ----

// Starts counting the calling thread's ops: registers the callback (removed again by
// idc_counters_stop, on the same thread, since recording inputs for every op costs time).
char* idc_counters_start() {
  return guarded([] {
    if (!g_handle.has_value()) {
      // Thread-local: only this thread's ops count (not those of other threads of the
      // process), and the autograd engine carries the callback to the threads that run this
      // thread's backward passes.
      g_handle = at::addThreadLocalCallback(at::RecordFunctionCallback(&on_start, &on_end)
                                                .needsInputs(true)
                                                .scopes({at::RecordScope::FUNCTION}));
    }
    g_ops = 0;
    g_top = 0;
    g_h2d = 0;
    g_d2h = 0;
  });
}

// Stops counting and removes the callback; writes what was counted since the start.
void idc_counters_stop(uint64_t* ops, uint64_t* top, uint64_t* h2d, uint64_t* d2h) {
  if (g_handle.has_value()) {
    at::removeCallback(*g_handle);
    g_handle.reset();
  }
  *ops = g_ops.load();
  *top = g_top.load();
  *h2d = g_h2d.load();
  *d2h = g_d2h.load();
}

}  // extern "C"
