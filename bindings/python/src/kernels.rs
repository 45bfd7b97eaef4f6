//! `kernel_info()`: the core's report of the compute kernels this CPU runs.

use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The kernels the engine picks on this CPU, as a dict (see `cortexstream::KernelInfo`).
#[pyfunction]
pub fn kernel_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let info = cortexstream::kernel_info();
    let dict = PyDict::new(py);
    dict.set_item("matmul", info.matmul)?;
    dict.set_item("matmul_batched", info.matmul_batched)?;
    dict.set_item("matmul_batched_512", info.matmul_batched_512)?;
    dict.set_item("attention", info.attention)?;
    dict.set_item("attention_slice", info.attention_slice)?;
    Ok(dict)
}
