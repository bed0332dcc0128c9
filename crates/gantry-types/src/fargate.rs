//! Fargate task sizes: the valid CPU/memory pairs, and the "1 vCPU" / "2 GB" notations.

/// Parses task-level cpu: "256", "1024", "1 vCPU", "0.25 vcpu" -> CPU units.
pub fn parse_cpu(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Some(n);
    }
    let lower = t.to_ascii_lowercase();
    let num = lower.strip_suffix("vcpu")?.trim();
    let v: f64 = num.parse().ok()?;
    let units = v * 1024.0;
    (units.fract() == 0.0 && units > 0.0).then_some(units as i64)
}

/// Parses task-level memory: "512", "2048", "2 GB", "0.5GB" -> MiB.
pub fn parse_memory(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i64>() {
        return Some(n);
    }
    let lower = t.to_ascii_lowercase();
    let num = lower.strip_suffix("gb")?.trim();
    let v: f64 = num.parse().ok()?;
    let mib = v * 1024.0;
    (mib.fract() == 0.0 && mib > 0.0).then_some(mib as i64)
}

/// The memory values (MiB) Fargate allows for a CPU value, per AWS's table.
pub fn memory_options(cpu: i64) -> Vec<i64> {
    let range = |lo: i64, hi: i64, step: i64| (lo..=hi).step_by(step as usize).collect::<Vec<_>>();
    match cpu {
        256 => vec![512, 1024, 2048],
        512 => range(1024, 4096, 1024),
        1024 => range(2048, 8192, 1024),
        2048 => range(4096, 16384, 1024),
        4096 => range(8192, 30720, 1024),
        8192 => range(16384, 61440, 4096),
        16384 => range(32768, 122880, 8192),
        _ => vec![],
    }
}

pub fn is_valid_size(cpu: i64, memory: i64) -> bool {
    memory_options(cpu).contains(&memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notations() {
        assert_eq!(parse_cpu("1 vCPU"), Some(1024));
        assert_eq!(parse_cpu("0.25 vcpu"), Some(256));
        assert_eq!(parse_cpu("512"), Some(512));
        assert_eq!(parse_cpu("fast"), None);
        assert_eq!(parse_memory("2 GB"), Some(2048));
        assert_eq!(parse_memory("0.5GB"), Some(512));
        assert_eq!(parse_memory("lots"), None);
    }

    #[test]
    fn size_table() {
        assert!(is_valid_size(256, 512));
        assert!(!is_valid_size(256, 4096));
        assert!(is_valid_size(1024, 8192));
        assert!(!is_valid_size(1024, 1024));
        assert!(is_valid_size(8192, 20480));
        assert!(!is_valid_size(8192, 18432), "8 vCPU steps by 4 GB");
        assert!(!is_valid_size(300, 1024));
    }
}
