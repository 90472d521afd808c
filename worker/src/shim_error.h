// How the shim's C functions report errors to Rust (shim.cpp, trace.cpp): a function that can
// fail returns nullptr or an error string from strdup (freed with idc_free_error), so that no
// C++ exception crosses into Rust.
#pragma once

#include <c10/util/Exception.h>

#include <cstring>
#include <exception>
#include <string>

namespace idc_shim {

inline char* error_string(const std::string& s) { return strdup(s.c_str()); }

// Runs `f`: nullptr when it returns, else what it threw, as an error string.
template <typename F>
char* guarded(F f) {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return error_string(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return error_string(e.what());
  }
}

}  // namespace idc_shim
