//! What every benchmark states first: the machine its figures come from.

/// Prints `kernel: <release>` and `cpu: <model> (<n> CPUs)`.
pub fn describe() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':').map(|(_, model)| model.trim()))
        .unwrap_or("unknown");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("kernel: {}", release.trim());
    println!("cpu: {model} ({cpus} CPUs)");
}
