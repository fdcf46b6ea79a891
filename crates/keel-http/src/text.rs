//! Text echoed in error messages, clipped and quoted.

pub(crate) use keel_core::{clip, shown};
