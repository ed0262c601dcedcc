//! Writes the CRD YAML for every resource into a directory (default `crds/`).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "crds".to_string()));
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in kubeless_broker::resources::crd_files()? {
        std::fs::write(dir.join(&file), yaml)?;
        println!("wrote {}", dir.join(file).display());
    }
    Ok(())
}
