//! Routes llama.cpp / ggml / mtmd log lines into `tracing` and remembers the last error line
//! per thread, so a failed call can say why (llama.cpp often only logs the reason).

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};

use llama_cpp_sys_2 as sys;

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
    static LAST_LEVEL: RefCell<sys::ggml_log_level> = const { RefCell::new(sys::GGML_LOG_LEVEL_NONE) };
}

/// Installs the log callback for llama.cpp and mtmd.
pub(super) fn install() {
    // SAFETY: `forward` is a plain `extern "C"` function valid for the whole program; user data is unused.
    unsafe {
        sys::llama_log_set(Some(forward), std::ptr::null_mut());
        sys::mtmd_helper_log_set(Some(forward), std::ptr::null_mut());
    }
}

/// Clears the remembered error line of this thread (call before an operation that may fail).
pub(super) fn clear_last_error() {
    LAST_ERROR.with(|e| e.borrow_mut().clear());
}

/// The last error line llama.cpp logged on this thread, or a generic text.
pub(super) fn last_error() -> String {
    let msg = LAST_ERROR.with(|e| e.borrow().trim().to_string());
    if msg.is_empty() {
        "llama.cpp gave no reason (see the debug log)".to_string()
    } else {
        msg
    }
}

extern "C" fn forward(level: sys::ggml_log_level, text: *const c_char, _user: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string that lives for the duration of the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let continued = level == sys::GGML_LOG_LEVEL_CONT;
    let level = if continued {
        LAST_LEVEL.with(|l| *l.borrow())
    } else {
        LAST_LEVEL.with(|l| *l.borrow_mut() = level);
        level
    };
    let line = text.trim_end();
    match level {
        sys::GGML_LOG_LEVEL_ERROR => {
            LAST_ERROR.with(|e| {
                let mut e = e.borrow_mut();
                if !continued {
                    e.clear();
                }
                e.push_str(line);
            });
            // Failing calls carry this text in their error, so it is not printed twice.
            tracing::debug!(target: "llama.cpp", "{line}");
        }
        sys::GGML_LOG_LEVEL_WARN => tracing::debug!(target: "llama.cpp", "{line}"),
        _ => tracing::trace!(target: "llama.cpp", "{line}"),
    }
}
