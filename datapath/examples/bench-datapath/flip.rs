//! Promotions: one endpoint, and 1,000 at once.
use super::*;

pub(super) fn flips(datapath: &mut Datapath) {
    let mut one = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let start = Instant::now();
        datapath.flip(SERVER).unwrap();
        one.push(start.elapsed());
    }
    one.sort();
    println!("flip_one_p50_us: {:.1} us", percentile(&one, 0.5).as_secs_f64() * 1e6);
    println!("flip_one_p99_us: {:.1} us", percentile(&one, 0.99).as_secs_f64() * 1e6);

    let endpoints: Vec<u32> = (10_000..11_000).collect();
    for &endpoint in &endpoints {
        datapath.add_endpoint(endpoint).unwrap();
        datapath.set_candidate(endpoint, Some(Slot::B)).unwrap();
    }
    let start = Instant::now();
    datapath.flip_all(&endpoints).unwrap();
    let flip_all = start.elapsed();
    println!("flip_1000_ms: {:.2} ms", flip_all.as_secs_f64() * 1e3);

    let policy = [allow_all(Direction::Ingress)];
    let start = Instant::now();
    for &endpoint in &endpoints {
        datapath.load_slot(endpoint, Slot::B, &policy).unwrap();
    }
    let replace = start.elapsed();
    println!("inner_map_replace_1000_ms: {:.1} ms", replace.as_secs_f64() * 1e3);
    println!("inner_map_replace_vs_flip_ratio: {:.0}", replace.as_secs_f64() / flip_all.as_secs_f64());
    for endpoint in endpoints {
        datapath.detach(endpoint).unwrap();
    }
}
