//! Buffers the library hands to C callers (strings and token arrays) and their frees.
//!
//! Each buffer carries its byte size in a hidden header in front of the data, so the
//! matching `cs_*_free` needs only the pointer (as `free(3)` does) even when a string
//! contains a NUL byte.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ffi::c_char;
use std::mem::{align_of, size_of};
use std::ptr;

use crate::args::{check_out, non_null};
use crate::status::{cs_status, guard, Failure};

/// Header size; also the alignment of the data behind it, enough for every element type
/// handed out (bytes, `uint32_t`).
const HEADER: usize = 16;

fn layout(data_bytes: usize) -> Layout {
    Layout::from_size_align(HEADER + data_bytes, HEADER).expect("buffer sizes come from existing Rust slices")
}

/// Copies `items` into a library-owned buffer for C; free it with [`free_buffer`].
fn into_buffer<T: Copy>(items: &[T]) -> *mut T {
    const { assert!(align_of::<T>() <= HEADER && size_of::<usize>() <= HEADER) };
    let bytes = std::mem::size_of_val(items);
    let layout = layout(bytes);
    // SAFETY: the layout has a non-zero size (the header).
    let base = unsafe { alloc(layout) };
    if base.is_null() {
        handle_alloc_error(layout);
    }
    // SAFETY: `base` has room for the header plus `bytes`; the data offset is aligned for T.
    unsafe {
        base.cast::<usize>().write(bytes);
        let data = base.add(HEADER).cast::<T>();
        ptr::copy_nonoverlapping(items.as_ptr(), data, items.len());
        data
    }
}

/// Frees a buffer made by [`into_buffer`].
///
/// # Safety
/// `data` must come from `into_buffer` and not have been freed yet.
unsafe fn free_buffer<T>(data: *mut T) {
    // SAFETY: by the contract, the header sits HEADER bytes before `data`.
    unsafe {
        let base = data.cast::<u8>().sub(HEADER);
        let bytes = base.cast::<usize>().read();
        dealloc(base, layout(bytes));
    }
}

/// Hands `text` to C as a NUL-terminated string plus its length in bytes (without the NUL).
///
/// # Safety
/// Both out-pointers must be valid for writes (checked non-NULL by the caller).
pub(crate) unsafe fn write_string(text: &str, out_text: *mut *mut c_char, out_len: *mut usize) {
    let mut bytes = Vec::with_capacity(text.len() + 1);
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(0);
    // SAFETY: forwarded caller contract.
    unsafe {
        out_text.write(into_buffer(&bytes).cast::<c_char>());
        out_len.write(text.len());
    }
}

/// Hands `tokens` to C as a library-owned array plus its length.
///
/// # Safety
/// Both out-pointers must be valid for writes (checked non-NULL by the caller).
pub(crate) unsafe fn write_tokens(tokens: &[u32], out_tokens: *mut *mut u32, out_len: *mut usize) {
    // SAFETY: forwarded caller contract.
    unsafe {
        out_tokens.write(into_buffer(tokens));
        out_len.write(tokens.len());
    }
}

/// Checks the pair of out-params a string or array result is written to.
pub(crate) fn check_out_buffer<T>(
    out: *mut *mut T,
    out_len: *mut usize,
    param: &'static str,
    len_param: &'static str,
) -> Result<(), Failure> {
    check_out(out, param)?;
    check_out(out_len, len_param)
}

/// Frees a string returned by the library (`cs_engine_detokenize`, `cs_engine_apply_chat_template`).
///
/// Ownership: free every such string exactly once; the pointer is invalid afterwards.
/// NULL returns CS_INVALID_ARGUMENT. Never pass strings the library lends (event text,
/// model info names, `cs_last_error_message()`).
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_string_free(text: *mut c_char) -> cs_status {
    guard(|| {
        non_null(text, "text")?;
        // SAFETY: by the documented contract it came from write_string and is freed once.
        unsafe { free_buffer(text) };
        Ok(())
    })
}

/// Frees a token array returned by `cs_engine_tokenize`.
///
/// Ownership: free every such array exactly once; the pointer is invalid afterwards.
/// NULL returns CS_INVALID_ARGUMENT.
/// Thread-safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn cs_tokens_free(tokens: *mut u32) -> cs_status {
    guard(|| {
        non_null(tokens, "tokens")?;
        // SAFETY: by the documented contract it came from write_tokens and is freed once.
        unsafe { free_buffer(tokens) };
        Ok(())
    })
}
