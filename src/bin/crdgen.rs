//! Writes the CRD YAML for every resource: one file per CRD into a directory (default `crds/`),
//! and all of them into `deploy/00-crds.yaml` (what `kubectl apply -f deploy/` installs).

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "crds".to_string()));
    let deploy = PathBuf::from(std::env::args().nth(2).unwrap_or_else(|| "deploy/00-crds.yaml".to_string()));
    std::fs::create_dir_all(&dir)?;
    let files = kubeless_broker::resources::crd_files()?;
    for (file, yaml) in &files {
        std::fs::write(dir.join(file), yaml)?;
        println!("wrote {}", dir.join(file).display());
    }
    std::fs::write(&deploy, kubeless_broker::resources::crds_bundle(&files))?;
    println!("wrote {}", deploy.display());
    Ok(())
}
