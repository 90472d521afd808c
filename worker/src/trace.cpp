// TorchScript tracing for `idc-worker export-torchscript`, for the worker's Rust side
// (`shim.rs`). It is tch's tracing (`atm_create_for_tracing` / `atm_end_tracing` in torch-sys)
// with one addition: the model's weights become the traced module's parameters and buffers,
// read in the graph through `prim::GetAttr` on `self`, as `torch.jit.trace` of an `nn.Module`
// makes them. tch's own trace inlines every weight as a constant, which `module.to(device)`
// does not move: WSInfer's `model.to("cuda")` would then fail on a GPU.
//
// Every function that can fail returns nullptr or an error string (see shim_error.h).
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/csrc/jit/passes/fixup_trace_scope_blocks.h>
#include <torch/csrc/jit/passes/normalize_ops.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "shim_error.h"

namespace {

using idc_shim::guarded;
namespace tracer = torch::jit::tracer;

// The tracing state of the trace in progress (one per thread).
const std::shared_ptr<tracer::TracingState>& current_trace() {
  const auto& state = tracer::getTracingState();
  if (!state) throw std::runtime_error("no trace is in progress");
  return state;
}

}  // namespace

extern "C" {

// Starts tracing a new module of class `name` on this thread; its method will take `input`.
// `*module` receives the module (free it with idc_trace_free).
char* idc_trace_begin(const char* name, at::Tensor* input, void** module) {
  *module = nullptr;
  return guarded([&] {
    if (tracer::isTracing()) throw std::runtime_error("a trace is already in progress");
    auto m = std::make_unique<torch::jit::Module>(name);
    auto state = std::make_shared<tracer::TracingState>();
    tracer::setTracingState(state);
    state->graph->insertInput(0, "self")->setType(m->_ivalue()->type());
    auto* value = state->graph->addInput("input");
    value->setType(torch::jit::TensorType::get());
    state->setValue(*input, value);
    *module = m.release();
  });
}

// Makes `weight` the module's attribute `attr` (a parameter, or a buffer when `buffer`) and the
// trace read it from there.
char* idc_trace_bind(void* module, const char* attr, at::Tensor* weight, bool buffer) {
  return guarded([&] {
    auto& state = current_trace();
    auto* m = static_cast<torch::jit::Module*>(module);
    m->register_parameter(attr, *weight, buffer);
    auto* self = state->graph->inputs().at(0);
    state->setValue(*weight, state->graph->insertGetAttr(self, attr));
  });
}

// Ends the trace: `output` is what the module's method `forward` returns.
char* idc_trace_end(void* module, at::Tensor* output) {
  return guarded([&] {
    auto state = current_trace();
    auto* m = static_cast<torch::jit::Module*>(module);
    state->graph->registerOutput(state->getOutput(*output, 0));
    torch::jit::FixupTraceScopeBlocks(state->graph, m);
    torch::jit::NormalizeOps(state->graph);
    tracer::setTracingState(nullptr);
    auto fn = m->_ivalue()->compilation_unit()->create_function("forward", state->graph);
    m->type()->addMethod(fn);
  });
}

// Saves the module as a TorchScript file at `path`.
char* idc_module_save(void* module, const char* path) {
  return guarded([&] { static_cast<torch::jit::Module*>(module)->save(path); });
}

// Frees the module, abandoning its trace if it has not ended (the forward pass failed).
void idc_trace_free(void* module) {
  if (tracer::isTracing()) tracer::abandon();
  delete static_cast<torch::jit::Module*>(module);
}

}  // extern "C"
