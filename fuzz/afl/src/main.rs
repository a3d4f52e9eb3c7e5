//! `peerchat-fuzz-afl TARGET`: runs one fuzz target under AFL++ (persistent mode).

fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    let Some(target) = peerchat_fuzz::target(&name) else {
        let names: Vec<&str> = peerchat_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
        eprintln!(
            "usage: peerchat-fuzz-afl TARGET, one of: {}",
            names.join(", ")
        );
        std::process::exit(2);
    };
    afl::fuzz!(|data: &[u8]| target(data));
}
