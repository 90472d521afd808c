//! The Rust side of `shim.cpp` and `trace.cpp`: the ATen features tch 0.24 does not wrap (bf16
//! autocast, the fused multi-tensor optimizer kernels, `_foreach_` gradient clipping, gradients
//! set to none, op counters from a RecordFunction callback, and TorchScript tracing that keeps
//! the weights as the module's parameters), each behind a safe function.

use crate::error::WorkerError;
use std::ffi::{CStr, CString, c_char, c_void};
use tch::TchError;
use tch::Tensor;

type RawTensor = *mut torch_sys::C_tensor;

unsafe extern "C" {
    fn idc_free_error(e: *mut c_char);
    fn idc_autocast_bf16_enter();
    fn idc_autocast_bf16_exit();
    #[cfg(test)]
    fn idc_require_op(name: *const c_char) -> *mut c_char;
    fn idc_require_ops() -> *mut c_char;
    fn idc_grads_to_none(params: *const RawTensor, n: usize);
    fn idc_clip_grad_norm(
        params: *const RawTensor,
        n: usize,
        max_norm: f64,
        total: *mut RawTensor,
    ) -> *mut c_char;
    fn idc_fused_sgd(
        params: *const RawTensor,
        bufs: *const RawTensor,
        n: usize,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
        nesterov: bool,
        first_step: bool,
    ) -> *mut c_char;
    #[allow(clippy::too_many_arguments)]
    fn idc_fused_adam(
        params: *const RawTensor,
        exp_avgs: *const RawTensor,
        exp_avg_sqs: *const RawTensor,
        step: RawTensor,
        n: usize,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        decoupled: bool,
    ) -> *mut c_char;
    fn idc_counters_start() -> *mut c_char;
    fn idc_counters_stop(ops: *mut u64, top: *mut u64, h2d: *mut u64, d2h: *mut u64);
    fn idc_trace_begin(
        name: *const c_char,
        input: RawTensor,
        module: *mut *mut c_void,
    ) -> *mut c_char;
    fn idc_trace_bind(
        module: *mut c_void,
        attr: *const c_char,
        weight: RawTensor,
        buffer: bool,
    ) -> *mut c_char;
    fn idc_trace_end(module: *mut c_void, output: RawTensor) -> *mut c_char;
    fn idc_module_save(module: *mut c_void, path: *const c_char) -> *mut c_char;
    fn idc_trace_free(module: *mut c_void);
}

/// The libtorch the worker was built against (its headers compiled the shim).
pub const LIBTORCH_BUILT: &str = env!("IDC_LIBTORCH_VERSION");

/// Turns a shim error string into a Rust error, freeing it.
fn check(e: *mut c_char) -> Result<(), String> {
    if e.is_null() {
        return Ok(());
    }
    // SAFETY: the shim returns a NUL-terminated string from strdup, freed once here.
    let msg = unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned();
    unsafe { idc_free_error(e) };
    Err(msg)
}

/// The error for a shim call: a missing operator names itself and the libtorch versions.
fn shim_error(msg: String) -> WorkerError {
    match msg.strip_prefix("missing operator ") {
        Some(op) => WorkerError::MissingOp {
            op: op.to_string(),
            built: LIBTORCH_BUILT,
        },
        None => WorkerError::Torch(TchError::Torch(msg)),
    }
}

/// Checks that the libtorch loaded at run time has every operator the shim calls.
pub fn require_ops() -> Result<(), WorkerError> {
    check(unsafe { idc_require_ops() }).map_err(shim_error)
}

/// Checks that the dispatcher knows `name` (`aten::op` or `aten::op.overload`).
#[cfg(test)]
pub fn require_op(name: &str) -> Result<(), WorkerError> {
    let c = std::ffi::CString::new(name).map_err(|e| WorkerError::Internal(e.to_string()))?;
    check(unsafe { idc_require_op(c.as_ptr()) }).map_err(shim_error)
}

/// Runs `f` under CUDA bf16 autocast when `enabled` (fp32 master weights are kept).
pub fn maybe_bf16<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    // SAFETY: the shim only flips libtorch's thread-local autocast state; enter and exit pair up.
    unsafe { idc_autocast_bf16_enter() };
    let out = f();
    unsafe { idc_autocast_bf16_exit() };
    out
}

fn raw(ts: &[Tensor]) -> Vec<RawTensor> {
    ts.iter().map(|t| t.as_ptr() as RawTensor).collect()
}

/// Sets every gradient of `params` to none: no kernel runs, and backward writes fresh ones.
pub fn grads_to_none(params: &[Tensor]) {
    let p = raw(params);
    // SAFETY: the pointers are live tch tensors for the duration of the call.
    unsafe { idc_grads_to_none(p.as_ptr(), p.len()) };
}

/// Scales the gradients of `params` so their global L2 norm is at most `max_norm`; returns the
/// norm before, as a device scalar (None when no parameter has a gradient). No host sync.
pub fn clip_grad_norm(params: &[Tensor], max_norm: f64) -> Result<Option<Tensor>, WorkerError> {
    let p = raw(params);
    let mut total: RawTensor = std::ptr::null_mut();
    check(unsafe { idc_clip_grad_norm(p.as_ptr(), p.len(), max_norm, &mut total) })
        .map_err(shim_error)?;
    // SAFETY: a non-null `total` is a new at::Tensor the shim allocated for us to own.
    Ok((!total.is_null()).then(|| unsafe { Tensor::from_ptr(total) }))
}

/// One `_fused_sgd_` step over the parameters that have gradients.
pub struct SgdStep {
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    pub first_step: bool,
}

pub fn fused_sgd(params: &[Tensor], bufs: &[Tensor], s: &SgdStep) -> Result<(), WorkerError> {
    let p = raw(params);
    let b = raw(bufs);
    assert!(
        b.is_empty() || b.len() == p.len(),
        "one momentum buffer per parameter"
    );
    let bufs_ptr = if b.is_empty() {
        std::ptr::null()
    } else {
        b.as_ptr()
    };
    check(unsafe {
        idc_fused_sgd(
            p.as_ptr(),
            bufs_ptr,
            p.len(),
            s.lr,
            s.momentum,
            s.weight_decay,
            s.nesterov,
            s.first_step,
        )
    })
    .map_err(shim_error)
}

/// One `_fused_adam_` (or `_fused_adamw_`, when `decoupled`) step.
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub eps: f64,
    pub decoupled: bool,
}

/// `step` is a float scalar on the parameters' device holding the step number (1 on the first).
pub fn fused_adam(
    params: &[Tensor],
    exp_avgs: &[Tensor],
    exp_avg_sqs: &[Tensor],
    step: &Tensor,
    s: &AdamStep,
) -> Result<(), WorkerError> {
    assert!(exp_avgs.len() == params.len() && exp_avg_sqs.len() == params.len());
    let (p, m, v) = (raw(params), raw(exp_avgs), raw(exp_avg_sqs));
    check(unsafe {
        idc_fused_adam(
            p.as_ptr(),
            m.as_ptr(),
            v.as_ptr(),
            step.as_ptr() as RawTensor,
            p.len(),
            s.lr,
            s.beta1,
            s.beta2,
            s.weight_decay,
            s.eps,
            s.decoupled,
        )
    })
    .map_err(shim_error)
}

/// What the op counters saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// ATen ops dispatched, those called inside other ops' kernels included (as
    /// `torch.profiler` lists them).
    pub ops: u64,
    /// The ops the caller dispatched itself (not inside another op).
    pub top: u64,
    /// Host-to-device copies.
    pub h2d: u64,
    /// Device-to-host reads, each of which makes the host wait for the device: copies to the
    /// host, and `aten::_local_scalar_dense` (`item()`) on a device tensor. On the CPU a read the
    /// caller makes itself counts too (it is the one that would wait on a device); reads inside
    /// a CPU kernel (the CPU fused Adam reads its step counter) do not.
    pub d2h: u64,
}

/// Counts the ATen ops of the calling thread, and of the autograd threads that run its backward
/// passes; other threads' ops are not counted. One count at a time (the totals are global). The
/// callback slows every op down, so timings are taken without it.
pub struct Counter;

static COUNTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Counter {
    /// Runs `f` while counting; returns its result and what was counted.
    pub fn count<T>(f: impl FnOnce() -> T) -> Result<(T, Counts), WorkerError> {
        let _one = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
        check(unsafe { idc_counters_start() }).map_err(shim_error)?;
        let out = f();
        let mut n = Counts::default();
        unsafe { idc_counters_stop(&mut n.ops, &mut n.top, &mut n.h2d, &mut n.d2h) };
        Ok((out, n))
    }
}

/// A weight of a traced module: its attribute name (no dots), the tensor, and whether it is a
/// buffer (moved and saved with the module, but not trained: batch norm statistics) rather than
/// a parameter.
pub struct Weight<'a> {
    pub name: String,
    pub tensor: &'a Tensor,
    pub buffer: bool,
}

/// The module being traced; dropping it frees it (abandoning the trace if it has not ended).
struct Traced(*mut c_void);

impl Drop for Traced {
    fn drop(&mut self) {
        // SAFETY: the module came from idc_trace_begin and is freed once, here.
        unsafe { idc_trace_free(self.0) };
    }
}

/// Traces `forward` applied to `input` into a TorchScript module named `name`, whose method
/// `forward` takes one tensor shaped like `input` (any batch size), and saves it at `path`.
/// The `weights` that `forward` reads become the module's parameters and buffers (listed by
/// `named_parameters`, moved by `module.to(device)`), not constants; every tensor `forward`
/// reads must be `input`, one of them, or derived from them.
pub fn trace_to_file(
    name: &str,
    input: &Tensor,
    weights: &[Weight],
    forward: impl FnOnce(&Tensor) -> Tensor,
    path: &std::path::Path,
) -> Result<(), WorkerError> {
    let c = |s: &str| CString::new(s).map_err(|e| WorkerError::Internal(format!("{s:?}: {e}")));
    let mut module = std::ptr::null_mut();
    // SAFETY: `input` is a live tch tensor; the shim writes the new module to `module`.
    check(unsafe { idc_trace_begin(c(name)?.as_ptr(), input.as_ptr() as RawTensor, &mut module) })
        .map_err(shim_error)?;
    let traced = Traced(module);
    for w in weights {
        // SAFETY: the module is live; the tensor is a live tch tensor the module now shares.
        check(unsafe {
            idc_trace_bind(
                traced.0,
                c(&w.name)?.as_ptr(),
                w.tensor.as_ptr() as RawTensor,
                w.buffer,
            )
        })
        .map_err(|e| shim_error(format!("weight {}: {e}", w.name)))?;
    }
    let output = forward(input);
    let path_c = c(&path.to_string_lossy())?;
    // SAFETY: the module and `output` are live.
    check(unsafe { idc_trace_end(traced.0, output.as_ptr() as RawTensor) }).map_err(shim_error)?;
    check(unsafe { idc_module_save(traced.0, path_c.as_ptr()) })
        .map_err(|e| shim_error(format!("saving {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use idc::exit::ProcessExitCode;
    use tch::{Device, Kind};

    #[test]
    fn a_missing_operator_names_itself_and_the_libtorch() {
        require_ops().unwrap();
        require_op("aten::_fused_sgd_").unwrap();
        let e = require_op("aten::_no_such_op_").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("aten::_no_such_op_") && msg.contains(LIBTORCH_BUILT),
            "{msg}"
        );
        assert_eq!(e.process_exit_code(), idc::exit::ExitCode::UserError);
    }

    #[test]
    fn counters_see_reads_and_ops() {
        let t = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let ((), n) = Counter::count(|| {
            let s = (&t * 2.0).sum(Kind::Float);
            let _ = s.double_value(&[]);
        })
        .unwrap();
        assert_eq!(n.d2h, 1, "{n:?}");
        assert!(n.ops >= 3, "{n:?}");
        let ((), n) = Counter::count(|| {
            let _ = (&t * 2.0).sum(Kind::Float);
        })
        .unwrap();
        assert_eq!(n.d2h, 0, "{n:?}");
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let q = Tensor::zeros([1], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        // Gradients (3, 0) and (4): norm 5.
        ((&p * Tensor::from_slice(&[3.0f32, 0.0])).sum(Kind::Float) + (&q * 4.0).sum(Kind::Float))
            .backward();
        let ps = [p.shallow_clone(), q.shallow_clone()];
        let total = clip_grad_norm(&ps, 1.0).unwrap().unwrap();
        assert!((total.double_value(&[]) - 5.0).abs() < 1e-6);
        let g: Vec<f32> = Vec::try_from(p.grad()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-5 && g[1] == 0.0, "{g:?}");
        // Under the limit nothing changes.
        let total = clip_grad_norm(&ps, 10.0).unwrap().unwrap();
        assert!((total.double_value(&[]) - 1.0).abs() < 1e-4);
        assert!((q.grad().double_value(&[0]) - 0.8).abs() < 1e-5);
        grads_to_none(&ps);
        assert!(!p.grad().defined() && !q.grad().defined());
        assert!(clip_grad_norm(&ps, 1.0).unwrap().is_none());
    }
}
