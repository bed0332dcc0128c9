//! `gantry image pull|load|ls|rm|gc`.

use crate::NodeArgs;
use anyhow::Result;
use clap::Subcommand;
use gantry_runtime::image::ImageStore;
use std::collections::HashSet;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Pull an image from a registry.
    Pull { reference: String },
    /// Import a `docker save` archive or an OCI image layout (directory or tar).
    Load {
        path: PathBuf,
        /// Name for an image the archive does not name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List images.
    Ls,
    /// Remove an image's name (its blobs go at the next gc).
    Rm { reference: String },
    /// Delete blobs and layers no image or task uses.
    Gc,
}

pub fn run(args: &NodeArgs, cmd: ImageCmd) -> Result<i32> {
    let store = ImageStore::open(args.node_config()?.images)?;
    match cmd {
        ImageCmd::Pull { reference } => {
            let r = store.pull(&reference, true)?;
            println!("{} {}", r.name, r.manifest);
        }
        ImageCmd::Load { path, name } => {
            for r in store.load(&path, name.as_deref())? {
                println!("{} {}", r.name, r.manifest);
            }
        }
        ImageCmd::Ls => {
            println!("{:<60} {:<19} {:>10}", "NAME", "MANIFEST", "SIZE");
            for r in store.list()? {
                println!(
                    "{:<60} {:<19} {:>10}",
                    r.name,
                    &r.manifest.as_str()[..19],
                    human(r.size)
                );
            }
        }
        ImageCmd::Rm { reference } => {
            let r = store.remove(&reference)?;
            println!("untagged {}", r.name);
        }
        ImageCmd::Gc => {
            let node = args.node()?;
            // Layers of tasks that still exist are in use.
            let mut in_use = HashSet::new();
            for t in node.task_ids() {
                for e in std::fs::read_dir(node.task_dir(&t)).into_iter().flatten().flatten() {
                    if let Ok(Some(s)) =
                        gantry_runtime::shim::read_json::<gantry_runtime::shim::ShimSpec>(&e.path().join("shim.json"))
                    {
                        for l in s.lowers {
                            if let Some(n) = l.file_name() {
                                if let Ok(d) = format!("sha256:{}", n.to_string_lossy()).parse() {
                                    in_use.insert(d);
                                }
                            }
                        }
                    }
                }
            }
            let rep = node.images().gc(&in_use)?;
            println!(
                "removed {} blobs and {} layers, freed {}",
                rep.blobs_removed,
                rep.layers_removed,
                human(rep.bytes_freed)
            );
        }
    }
    Ok(0)
}

fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}KiB", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}
