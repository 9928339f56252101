//! Logs, traces and trace-context propagation.

pub mod propagation;

pub use propagation::TraceHeaders;
