//! `cortexstream._core`: the Python extension module over the `cortexstream` crate.
//!
//! A thin adapter: it converts arguments and results, maps core errors to exceptions in one
//! place (`errors`), and moves events to Python threads with the GIL released while waiting.
//! The friendly layer (model names, asyncio, numpy) is plain Python in `python/cortexstream`.

mod engine;
mod errors;
mod kernels;
mod logs;
mod options;
mod records;
mod registry;
mod stream;
mod tools;

use pyo3::prelude::*;

#[pymodule]
fn _core(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<engine::Engine>()?;
    module.add_class::<stream::Stream>()?;
    module.add_class::<records::Chunk>()?;
    module.add_class::<records::Completion>()?;
    module.add_class::<records::StopReason>()?;
    module.add_class::<records::Usage>()?;
    module.add_class::<records::Timings>()?;
    module.add_class::<records::TokenLogprobs>()?;
    module.add_class::<records::ModelInfo>()?;
    module.add_function(wrap_pyfunction!(logs::set_log_handler, module)?)?;
    module.add_function(wrap_pyfunction!(logs::dropped_log_records, module)?)?;
    module.add_function(wrap_pyfunction!(kernels::kernel_info, module)?)?;
    module.add_function(wrap_pyfunction!(options::option_names, module)?)?;
    module.add_function(wrap_pyfunction!(options::check_options, module)?)?;
    module.add_function(wrap_pyfunction!(options::engine_setting_names, module)?)?;
    module.add_function(wrap_pyfunction!(options::check_engine_settings, module)?)?;
    module.add_function(wrap_pyfunction!(registry::check_keep_alive, module)?)?;
    module.add_class::<tools::ToolCall>()?;
    module.add_class::<registry::Registry>()?;
    module.add_class::<registry::Lease>()?;
    module.add_class::<registry::LoadedModel>()?;
    module.add_class::<registry::ModelDescription>()?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
