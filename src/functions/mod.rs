//! The Function and HTTPTrigger reconcilers: which image runs a Function's runtime (the catalogue), the objects
//! each Function becomes, an HTTPTrigger's Ingress, and the controllers that keep them so
//! (Kubernetes mode, leader only).

pub mod catalogue;
pub mod ingress;
pub mod objects;
pub mod readiness;
pub mod reconciler;
