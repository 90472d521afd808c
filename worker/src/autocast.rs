//! bf16 autocast with fp32 master weights, through a small C++ shim (`shim.cpp`): tch's own
//! `autocast` only offers fp16 on CUDA.

unsafe extern "C" {
    fn idc_autocast_bf16_enter();
    fn idc_autocast_bf16_exit();
}

/// Runs `f` under CUDA bf16 autocast when `enabled`.
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
