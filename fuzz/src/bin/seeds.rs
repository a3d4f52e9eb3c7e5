//! Writes every target's seeds into `fuzz/corpus/<target>/seed-NN`.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, _) in peerchat_fuzz::TARGETS {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        for (i, seed) in peerchat_fuzz::seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), seed)?;
        }
    }
    println!("seeds written under {}", root.display());
    Ok(())
}
