//! The control plane: manifests in, running consumers out. It never touches a broker or a
//! function itself.

pub mod index;
pub mod manifests;
pub mod supervisor;
pub mod watch;
