//! What both benchmarks (`bench.rs`, `drift.rs`) need: their knobs, the rounding of their
//! reports, and the NIC of their i-th binding.

/// The environment variable `name` parsed, else `default`.
pub fn knob<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `x` rounded to `digits` decimals, for the JSON reports.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// The NIC ID of the i-th binding of a fleet.
#[allow(dead_code)] // not every benchmark makes a fleet of bindings
pub fn nic(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}
