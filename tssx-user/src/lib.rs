//! tssx user space: the pieces of `tssx-agent`.
#![deny(missing_docs)]
