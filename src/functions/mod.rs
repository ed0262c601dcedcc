//! The Function reconciler: which image runs a Function's runtime (the catalogue), the objects
//! each Function becomes, and the controller that keeps them so (Kubernetes mode, leader only).

pub mod catalogue;
pub mod objects;
pub mod readiness;
pub mod reconciler;
