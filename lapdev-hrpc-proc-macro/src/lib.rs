//! The `#[service]` attribute of HRPC. Use it through `lapdev_hrpc::service`.
