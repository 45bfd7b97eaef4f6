//! Crossing the boundary: reading what C passes in (NULL and UTF-8 checks, arrays given as
//! pointer + length, size-versioned structs) and writing out-params.

use std::ffi::{c_char, CStr};
use std::mem::{size_of, MaybeUninit};
use std::ptr;

use crate::status::Failure;

/// A reference to a required input; NULL is an error naming `param`.
///
/// # Safety
/// A non-NULL `ptr` must point to a valid `T` that outlives `'a`.
pub(crate) unsafe fn require<'a, T>(ptr: *const T, param: &'static str) -> Result<&'a T, Failure> {
    non_null(ptr, param)?;
    // SAFETY: non-NULL pointers are valid by the caller's contract.
    Ok(unsafe { &*ptr })
}

/// Fails with an error naming `param` if `ptr` is NULL; reads nothing.
pub(crate) fn non_null<T>(ptr: *const T, param: &'static str) -> Result<(), Failure> {
    if ptr.is_null() {
        return Err(Failure::invalid(param, format!("`{param}` is NULL")));
    }
    Ok(())
}

/// Checks that an out-param can be written; call before doing the work so a NULL out-param
/// fails fast and nothing is computed in vain.
pub(crate) fn check_out<T>(ptr: *mut T, param: &'static str) -> Result<(), Failure> {
    if ptr.is_null() {
        return Err(Failure::invalid(param, format!("out-param `{param}` is NULL")));
    }
    Ok(())
}

/// A required NUL-terminated UTF-8 string.
///
/// # Safety
/// A non-NULL `ptr` must point to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn c_str<'a>(ptr: *const c_char, param: &'static str) -> Result<&'a str, Failure> {
    // SAFETY: forwarded caller contract.
    unsafe { c_str_described(ptr, param, &format!("`{param}`")) }
}

/// An optional NUL-terminated UTF-8 string: NULL means "not given".
///
/// # Safety
/// As for [`c_str`].
pub(crate) unsafe fn optional_c_str<'a>(ptr: *const c_char, param: &'static str) -> Result<Option<&'a str>, Failure> {
    // SAFETY: forwarded caller contract.
    (!ptr.is_null()).then(|| unsafe { c_str(ptr, param) }).transpose()
}

/// Like [`c_str`], with `what` naming the string inside `param` (e.g. "`messages[2].role`").
///
/// # Safety
/// As for [`c_str`].
pub(crate) unsafe fn c_str_described<'a>(
    ptr: *const c_char,
    param: &'static str,
    what: &str,
) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::invalid(param, format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) };
    bytes.to_str().map_err(|e| Failure::invalid(param, format!("{what} is not valid UTF-8 ({e})")))
}

/// An array given as pointer + length. NULL is accepted only with length 0.
///
/// # Safety
/// A non-NULL `ptr` must point to `len` valid `T`s that outlive `'a`.
pub(crate) unsafe fn slice<'a, T>(ptr: *const T, len: usize, param: &'static str) -> Result<&'a [T], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::invalid(param, format!("`{param}` is NULL but its length is {len}")));
    }
    // SAFETY: non-NULL with `len` elements by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// An array of NUL-terminated UTF-8 strings given as pointer + count.
///
/// # Safety
/// As for [`slice`] and, for every element, [`c_str`].
pub(crate) unsafe fn c_str_array<'a>(
    ptr: *const *const c_char,
    len: usize,
    param: &'static str,
) -> Result<Vec<&'a str>, Failure> {
    // SAFETY: forwarded caller contract.
    let pointers = unsafe { slice(ptr, len, param)? };
    pointers
        .iter()
        .enumerate()
        // SAFETY: forwarded caller contract.
        .map(|(i, &p)| unsafe { c_str_described(p, param, &format!("`{param}[{i}]`")) })
        .collect()
}

/// A params struct C passes in, read with [`read_sized`].
pub(crate) trait SizedParams: Copy {
    /// Byte offsets and names of the struct's `bool` fields. C memory may hold any byte
    /// there (memset, an uninitialised field, another language's layout), but only 0 and 1
    /// are Rust `bool`s: reading another value as `bool` is undefined behaviour.
    const BOOL_FIELDS: &'static [(usize, &'static str)];
}

/// Reads a params struct whose first field is `size_t struct_size`.
///
/// A caller built against an older header passes a smaller size; the fields it does not know
/// keep the values in `defaults`. That is how fields get appended without breaking the ABI.
/// A size larger than this library's struct means the caller's header is newer than the
/// library, which cannot be honoured. The bytes are copied into a `MaybeUninit`, and the
/// struct is only formed once its `bool` fields are checked to hold 0 or 1 (an error naming
/// the field otherwise); every other field (integers, floats, raw pointers) accepts any
/// byte pattern.
///
/// # Safety
/// A non-NULL `ptr` must point to at least `struct_size` readable bytes.
pub(crate) unsafe fn read_sized<T: SizedParams>(ptr: *const T, defaults: T, param: &'static str) -> Result<T, Failure> {
    non_null(ptr, param)?;
    // SAFETY: every such struct starts with a size_t, readable by the caller's contract.
    let size = unsafe { ptr.cast::<usize>().read() };
    check_struct_size::<T>(size, param)?;
    let mut value = MaybeUninit::new(defaults);
    // SAFETY: `size` bytes are readable at `ptr` and fit in `value` (checked above).
    unsafe { ptr::copy_nonoverlapping(ptr.cast::<u8>(), value.as_mut_ptr().cast::<u8>(), size) };
    for &(offset, field) in T::BOOL_FIELDS {
        // SAFETY: `offset` is a field offset of `T`, so inside `value`; any byte is a valid u8.
        let byte = unsafe { value.as_ptr().cast::<u8>().add(offset).read() };
        if byte > 1 {
            return Err(Failure::invalid(
                field,
                format!("`{param}.{field}` is a bool but holds the byte {byte}; it must be 0 (false) or 1 (true)"),
            ));
        }
    }
    // SAFETY: the bytes come from `defaults` or the caller's struct of the same layout, and
    // the only fields with invalid byte patterns (bools) hold 0 or 1 (checked above).
    Ok(unsafe { value.assume_init() })
}

/// Writes an out-struct whose first field is `size_t struct_size`, set by the caller to the
/// size it allocated: only that many bytes are written, so older callers keep working when
/// fields are appended. `value.struct_size` is overwritten by the caller's size.
///
/// # Safety
/// A non-NULL `out` must point to at least `out->struct_size` writable bytes.
pub(crate) unsafe fn write_sized<T: Copy>(out: *mut T, value: T, param: &'static str) -> Result<(), Failure> {
    check_out(out, param)?;
    // SAFETY: the leading size_t is readable by the caller's contract.
    let size = unsafe { out.cast::<usize>().read() };
    check_struct_size::<T>(size, param)?;
    // SAFETY: `size` bytes are writable at `out` and readable from `value` (checked above).
    // The first size_t copied is `value`'s own struct_size, so restore the caller's afterwards.
    unsafe {
        ptr::copy_nonoverlapping(ptr::addr_of!(value).cast::<u8>(), out.cast::<u8>(), size);
        out.cast::<usize>().write(size);
    }
    Ok(())
}

fn check_struct_size<T>(size: usize, param: &'static str) -> Result<(), Failure> {
    if size < size_of::<usize>() || size > size_of::<T>() {
        return Err(Failure::invalid(
            param,
            format!(
                "`{param}.struct_size` is {size}, but this library's struct has {} bytes \
                 (initialise it with the matching cs_*_default_params or sizeof)",
                size_of::<T>()
            ),
        ));
    }
    Ok(())
}
