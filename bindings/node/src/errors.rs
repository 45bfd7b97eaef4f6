//! The one place a core [`Error`] becomes a JavaScript `Error`: message from the core,
//! `code` from [`Error::code`] (the same string the C library, Python and REST report) and,
//! when a request field is at fault, `param` with the field's JavaScript spelling.

use cortexstream::Error;
use napi::{Env, JsValue, Status};

use crate::naming::camel_case;

/// Builds the JavaScript error for `error`. Must run on the JavaScript thread.
pub fn to_js_error(env: &Env, error: Error) -> napi::Error {
    match decorated_error(env, &error) {
        Ok(js_error) => js_error,
        // Only when the environment is tearing down; the code still reaches the caller.
        Err(_) => napi::Error::new(Status::GenericFailure, format!("{} ({})", error, error.code())),
    }
}

fn decorated_error(env: &Env, error: &Error) -> napi::Result<napi::Error> {
    let mut object = env.create_error(napi::Error::new(Status::GenericFailure, error.to_string()))?;
    object.set("code", error.code())?;
    if let Some(param) = error.param() {
        object.set("param", camel_case(param))?;
    }
    Ok(napi::Error::from(object.to_unknown()))
}
