//! The Function reconciler's building blocks: which image runs a Function's runtime (the
//! catalogue), and — to come — the objects each Function becomes.

pub mod catalogue;
